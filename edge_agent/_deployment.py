"""The model a board runs for inference: staged releases, an atomic swap, the one before kept for rollback.

::

    STATE/model/
        current.onnx        what the board's applications load (a stable path)
        previous.onnx       the model deployed before it (rollback swaps the two back)
        version             the deployed release's version, one line (for applications to watch)
        releases.json       {sha256: version} of every release this board has staged
        staged/<sha256>.onnx  a downloaded release whose hash was checked, waiting to be deployed

Every file appears under its name only whole: it is written under a temporary
name, flushed to disk and renamed, and renaming is atomic. Deploying renames the
staged file over ``current.onnx`` after a hard link of the old one became
``previous.onnx``, so a board killed at any instant holds exactly one of the two
models at ``current.onnx``, whole. The deployed version is read from the file
itself (its hash, looked up in ``releases.json``), never from a note written
after the swap, so a kill between the swap and the ``version`` note cannot make
the two disagree: the note is rewritten from the hash at the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from protocol import ModelError, atomic_write

__all__ = ["Deployed", "ModelDeployment"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_RELEASES_KEPT = 64  # entries of releases.json (a board deploys a release a day at most, typically)


@dataclass(frozen=True)
class Deployed:
    version: int
    sha256: str
    path: Path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class ModelDeployment:
    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "model"
        self.staged = self.folder / "staged"
        self.current = self.folder / "current.onnx"
        self.previous = self.folder / "previous.onnx"
        self.staged.mkdir(parents=True, exist_ok=True)
        for folder in (self.folder, self.staged):  # what a kill left half-made: never under a real name
            for leftover in folder.glob(".*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    # -- releases this board knows -----------------------------------------------------------

    def _releases(self) -> dict[str, int]:
        try:
            raw = json.loads((self.folder / "releases.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{self.folder / 'releases.json'}: unreadable ({exc})") from exc
        if not isinstance(raw, dict):
            raise ModelError(f"{self.folder / 'releases.json'}: not a map of hashes to versions")
        return {str(k): int(v) for k, v in raw.items() if _SHA256.fullmatch(str(k)) and isinstance(v, int)}

    def stage(self, data: bytes, version: int, sha256: str) -> Path:
        """Keep a downloaded release (its hash checked) ready to deploy; its path."""
        if not _SHA256.fullmatch(sha256) or hashlib.sha256(data).hexdigest() != sha256:
            raise ModelError(f"release {version}: the model's bytes do not match its sha256; not staged")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelError(f"a release version is a positive integer, got {version!r}")
        releases = self._releases()
        releases[sha256] = version
        kept = dict(sorted(releases.items(), key=lambda item: item[1])[-MAX_RELEASES_KEPT:])
        atomic_write(self.folder / "releases.json", (json.dumps(kept, sort_keys=True) + "\n").encode())
        path = self.staged / f"{sha256}.onnx"
        if not path.exists():
            atomic_write(path, data)
        return path

    # -- what is deployed ----------------------------------------------------------------------

    def deployed(self) -> Deployed | None:
        """The release at ``current.onnx`` (None before the first deployment); rewrites a ``version`` note that a
        kill left behind."""
        if not self.current.exists():
            return None
        sha256 = _sha256_of(self.current)
        version = self._releases().get(sha256)
        if version is None:
            raise ModelError(f"{self.current}: not a release this board staged (sha256 {sha256[:12]})")
        note = self.folder / "version"
        try:
            written = note.read_text().strip()
        except OSError:
            written = None
        if written != str(version):
            atomic_write(note, f"{version}\n".encode())
        return Deployed(version, sha256, self.current)

    def previous_release(self) -> Deployed | None:
        if not self.previous.exists():
            return None
        sha256 = _sha256_of(self.previous)
        version = self._releases().get(sha256)
        return None if version is None else Deployed(version, sha256, self.previous)

    # -- changing it ---------------------------------------------------------------------------

    def deploy(self, sha256: str) -> Deployed:
        """Make the staged release ``sha256`` current, the current one previous."""
        staged = self.staged / f"{sha256}.onnx"
        if not staged.exists():
            raise ModelError(f"release {sha256[:12]} is not staged on this board")
        if self.current.exists():
            self._link(self.current, self.previous)
        os.replace(staged, self.current)  # the commit point: before it the old model, after it the new one
        _sync_folder(self.folder)
        deployed = self.deployed()
        assert deployed is not None
        return deployed

    def rollback(self) -> Deployed:
        """Make the previous model current again (and the current one previous)."""
        if not self.previous.exists():
            raise ModelError("no previous model on this board to roll back to")
        back, forth = self.folder / ".rollback.tmp", self.folder / ".rolled-back.tmp"
        self._hard_link(self.previous, back)  # second names: the previous model, the current one
        if self.current.exists():
            self._hard_link(self.current, forth)
        os.replace(back, self.current)  # the commit point
        if forth.exists():
            os.replace(forth, self.previous)
        _sync_folder(self.folder)
        deployed = self.deployed()
        assert deployed is not None
        return deployed

    def _link(self, source: Path, target: Path) -> None:
        """``target`` becomes another name of ``source``'s file, atomically (it may exist: it is replaced)."""
        temporary = self.folder / f".{target.name}.tmp"
        self._hard_link(source, temporary)
        os.replace(temporary, target)

    @staticmethod
    def _hard_link(source: Path, target: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        os.link(source, target)
