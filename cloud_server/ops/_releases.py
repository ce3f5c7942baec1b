"""The server's model releases: each one an ONNX model and its :class:`~protocol.Release` frame, kept in the state
dir, one of them current.

    STATE/releases/NNNN.frame          the release, sealed as the fleet's frames are (signed in a secured fleet)
    STATE/releases/models/<sha256>     its ONNX model (content-addressed: a rollback shares the file)
    STATE/releases/current             the version the fleet is told to run

The frame is what ``serve`` publishes (retained) and what a board checks: a tampered frame, or a model whose bytes
are not its sha256, is refused here as it is on a board. Writes are atomic; ``current`` moves last.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import (
    ConfigError,
    GenflError,
    ModelError,
    ProtocolError,
    Release,
    atomic_write,
    decode_message,
    encode_message,
    sign_frame,
    verify_frame,
)

if TYPE_CHECKING:
    from ..rounds._coordinator import Coordinator
    from ..rounds._round import RoundResult

log = logging.getLogger("genfl.server")

__all__ = ["AutoRelease", "ReleaseBook", "ReleaseWatcher", "StoredRelease", "release_book"]


@dataclass(frozen=True)
class StoredRelease:
    release: Release
    frame: bytes  # as published: sealed by the server's guard


class ReleaseBook:
    """``signing_key`` and ``fleet``: a secured fleet's (frames signed and checked); None for an open fleet."""

    def __init__(self, state_dir: Path, fleet: str, signing_key: Ed25519PrivateKey | None) -> None:
        self.folder = state_dir / "releases"
        self.fleet = fleet
        self._key = signing_key

    # -- reading --------------------------------------------------------------------------------

    def _open(self, payload: bytes, where: Path) -> Release:
        try:
            frame = payload if self._key is None else verify_frame(self.fleet, payload, self._key.public_key())
            return decode_message(frame, Release)
        except ProtocolError as exc:
            raise ModelError(f"{where}: not a release this server made ({exc})") from exc

    def releases(self) -> list[StoredRelease]:
        """Every release, oldest first (ModelError for one that does not check)."""
        found = []
        for path in sorted(self.folder.glob("*.frame")):
            payload = path.read_bytes()
            found.append(StoredRelease(self._open(payload, path), payload))
        return found

    def get(self, version: int) -> StoredRelease:
        path = self.folder / f"{version:04d}.frame"
        if not path.is_file():
            raise ConfigError(f"no release {version} in {self.folder}")
        payload = path.read_bytes()
        stored = StoredRelease(self._open(payload, path), payload)
        if stored.release.version != version:
            raise ModelError(f"{path} holds release {stored.release.version}")
        return stored

    def current(self) -> StoredRelease | None:
        try:
            text = (self.folder / "current").read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise ModelError(f"{self.folder / 'current'}: not a release number")
        return self.get(int(text))

    def model(self, release: Release) -> bytes:
        """The release's ONNX bytes, checked against its sha256."""
        path = self.folder / "models" / release.model_id
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"release {release.version}: its model is missing ({exc})") from exc
        if hashlib.sha256(data).hexdigest() != release.model_id:
            raise ModelError(f"release {release.version}: {path} does not match its sha256")
        return data

    # -- writing --------------------------------------------------------------------------------

    def add(self, model: bytes, *, model_name: str, classes: tuple[str, ...], input_shape: tuple[int, int, int],
            int8: bool, round_number: int, accuracy: float | None, note: str = "") -> StoredRelease:  # fmt: skip
        """A new release of ``model``, made current."""
        versions = [stored.release.version for stored in self.releases()]
        release = Release(max(versions, default=0) + 1, hashlib.sha256(model).hexdigest(), len(model), model_name,
                          classes, input_shape, int8, round_number, accuracy, time.time(), note)  # fmt: skip
        (self.folder / "models").mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "models" / release.model_id, model)
        frame = encode_message(release)
        payload = frame if self._key is None else sign_frame(self.fleet, frame, self._key)
        atomic_write(self.folder / f"{release.version:04d}.frame", payload)
        self._make_current(release.version)
        return StoredRelease(release, payload)

    def make_current(self, version: int) -> StoredRelease:
        """Release ``version`` current again (a rollback): its frame and model must still check."""
        stored = self.get(version)
        self.model(stored.release)
        self._make_current(version)
        return stored

    def _make_current(self, version: int) -> None:
        atomic_write(self.folder / "current", f"{version}\n".encode())


def release_book(state_dir: Path) -> ReleaseBook:
    """The releases of the fleet served from ``state_dir``: signed with its key when the fleet is secured."""
    from cloud_server.fleet._security import FleetSecurity  # the registry and its keys: only when asked

    security = FleetSecurity.load(state_dir)
    if security is None:
        return ReleaseBook(state_dir, "", None)
    try:
        return ReleaseBook(state_dir, security.fleet, security.signing_key)
    finally:
        security.close()


class ReleaseWatcher:
    """What ``serve`` does with the release book: every few seconds, the current release to the coordinator (a
    ``release`` or ``rollback`` another process ran takes effect within ``every_s``). A release that does not
    check is reported once and not handed out."""

    def __init__(self, book: ReleaseBook, every_s: float = 3.0) -> None:
        self.book = book
        self.every_s = every_s
        self._checked = -math.inf
        self._reported: str | None = None

    def poll(self, coordinator: Coordinator, now: float) -> None:
        if now - self._checked < self.every_s:
            return
        self._checked = now
        try:
            stored = self.book.current()
            if stored is None:
                return
            model = self.book.model(stored.release)
        except (GenflError, OSError) as exc:
            if str(exc) != self._reported:
                self._reported = str(exc)
                log.error("the current release is not handed out: %s", exc)
            return
        self._reported = None
        coordinator.offer_release(stored.release, stored.frame, model)


@dataclass
class AutoRelease:
    """``serve --release-every N`` and ``--release-when-better``: a release of a round's model as the round closes
    (its checkpoint is written by then). A release that cannot be made is logged; the rounds go on."""

    book: ReleaseBook
    state_dir: Path
    every: int = 0
    when_better: bool = False
    int8: bool = True
    calibration: str | None = None

    def due(self, round_number: int, accuracy: float | None) -> bool:
        if self.every and round_number % self.every == 0:
            return True
        if not self.when_better or accuracy is None:
            return False
        current = self.book.current()
        return current is None or current.release.accuracy is None or accuracy > current.release.accuracy

    def round_closed(self, result: RoundResult) -> None:
        from ._export import export_checkpoint, latest_checkpoint

        try:
            if not self.due(result.round, result.accuracy):
                return
            with tempfile.TemporaryDirectory(dir=self.state_dir) as work:
                exported = export_checkpoint(latest_checkpoint(self.state_dir, result.round), Path(work) / "m.onnx",
                                             int8=self.int8, calibration=self.calibration)  # fmt: skip
                model = exported.path.read_bytes()
            stored = self.book.add(model, model_name=exported.model_name, classes=exported.classes,
                                   input_shape=exported.input_shape, int8=self.int8, round_number=result.round,
                                   accuracy=result.accuracy, note="automatic")  # fmt: skip
        except (GenflError, OSError) as exc:
            log.error("round %d: no automatic release: %s", result.round, exc)
            return
        log.info("round %d: %s", result.round, stored.release.describe())
