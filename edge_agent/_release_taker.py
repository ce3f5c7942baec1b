"""A board's side of model releases: fetch a new release's model, check it, score it on the board's own held-out
data against the model it runs, and deploy it (an atomic swap, the previous kept) or say why not.

The release frame arrived through the agent's guard (signed by the server in a secured fleet); its model comes
in chunks like every blob, each chunk and the whole checked against the sha256s, within the size the release
announced. Whatever happens, the board keeps running the model it had until the new one is whole and scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from protocol import (
    MIN_CHUNK_SIZE,
    BlobAssembler,
    BlobChunk,
    BlobRequest,
    BlobStore,
    GenflError,
    ProtocolError,
    Release,
    chunk_count,
)

from ._deployment import Deployed, ModelDeployment

__all__ = ["ReleaseTaker"]

log = logging.getLogger("genfl.edge")

Scorer = Callable[[Path], float]  # an ONNX model's accuracy on the board's held-out slice


class ReleaseTaker:
    def __init__(self, device_id: str, deployment: ModelDeployment, store: BlobStore, score: Scorer,
                 margin: float, may_work: Callable[[], bool] = lambda: True) -> None:  # fmt: skip
        self.device_id = device_id
        self.deployment = deployment
        self.store = store
        self.score = score
        self.margin = margin  # how much worse than the deployed model a release may score and still be taken
        self.wanted: Release | None = None
        self._assembler: BlobAssembler | None = None
        self._scores: dict[str, float] = {}  # model sha256 -> its score here
        self._refused: set[int] = set()  # releases refused here: not fetched and scored again at every re-send
        self.outcome: tuple[int, str] | None = None  # (release, "deployed ..." / "refused: ...")
        self._broken = False  # the deployed model failed its check (said once)
        self.may_work = may_work  # the board's train window: releases are fetched and scored inside it only
        self.deferred: Release | None = None  # a release heard outside the window, taken when it opens

    def _deployed(self) -> Deployed | None:
        """The deployed release; None also when ``current.onnx`` is not one this board staged (edited on disk:
        reported once; the next release replaces it)."""
        try:
            return self.deployment.deployed()
        except (GenflError, OSError) as exc:
            if not self._broken:
                self._broken = True
                log.error("device %s: the deployed model is not a release it took: %s", self.device_id, exc)
            return None

    @property
    def running(self) -> int | None:
        deployed = self._deployed()
        return None if deployed is None else deployed.version

    @property
    def running_score(self) -> float | None:
        """How the deployed release scored on this board's held-out data (None: not scored by this run)."""
        deployed = self._deployed()
        score = None if deployed is None else self._scores.get(deployed.sha256)
        return None if score is None else round(score, 4)

    def on_release(self, release: Release, fleet_classes: tuple[str, ...] | None) -> BlobRequest | None:
        """What to ask the server for (the model's chunks), or None: nothing to fetch (it runs it, refuses it, or
        holds the model already and has just deployed it)."""
        if release.version == self.running or release.version in self._refused:
            return None
        if fleet_classes is not None and release.classes != fleet_classes:
            self._refuse(release, f"its classes are not the fleet's ({len(release.classes)} names)")
            return None
        if not self.may_work():
            if self.deferred != release:
                log.info("device %s: %s; taking it in the train window", self.device_id, release.describe())
            self.deferred = release
            return None
        if self.wanted is not None and self.wanted == release:
            return BlobRequest(release.model_id, () if self._assembler is None else self._assembler.missing())
        self.wanted, self._assembler = release, None
        if self.store.has(release.model_id):
            self._complete(release)
            return None
        log.info("device %s: %s; fetching it", self.device_id, release.describe())
        return BlobRequest(release.model_id, ())

    def due(self) -> Release | None:
        """The release heard outside the train window, once the window is open (then forgotten here)."""
        if self.deferred is None or not self.may_work():
            return None
        release, self.deferred = self.deferred, None
        return release

    def wants(self, blob_id: str) -> bool:
        return self.wanted is not None and blob_id == self.wanted.model_id

    def on_chunk(self, chunk: BlobChunk) -> None:
        release = self.wanted
        assert release is not None
        if chunk.total_size != release.model_size or chunk.count > chunk_count(release.model_size, MIN_CHUNK_SIZE):
            raise ProtocolError("bad-chunk", f"a chunk of a {chunk.total_size} B blob; release {release.version} "
                                f"is {release.model_size} B")  # fmt: skip
        if self._assembler is None:
            self._assembler = BlobAssembler(self.store, chunk.blob_id, chunk.count, chunk.total_size)
        if self._assembler.add(chunk):  # whole, and its sha256 checked
            self._assembler = None
            self._complete(release)

    def _score(self, sha256: str, path: Path) -> float:
        if sha256 not in self._scores:
            self._scores[sha256] = self.score(path)
        return self._scores[sha256]

    def _complete(self, release: Release) -> None:
        self.wanted = None
        try:
            staged = self.deployment.stage(self.store.get(release.model_id), release.version, release.model_id)
            new = self._score(release.model_id, staged)
            deployed = self._deployed()
            old = None if deployed is None else self._score(deployed.sha256, deployed.path)
        except (GenflError, OSError, KeyError) as exc:
            self._refuse(release, f"it does not check here: {exc}")
            return
        rollback = deployed is not None and release.version < deployed.version  # the operator went back: no vote
        if old is not None and new < old - self.margin and not rollback:
            self._refuse(release, f"it scores {new:.4f} on this board's held-out data, the deployed release "
                         f"{deployed.version} {old:.4f} (margin {self.margin:g})")  # type: ignore[union-attr]  # fmt: skip
            return
        try:
            self.deployment.deploy(release.model_id)
        except (GenflError, OSError) as exc:  # (a full disk): the deployed model stays
            self._refuse(release, f"it could not be swapped in: {exc}")
            return
        self._broken = False
        self.outcome = (release.version, f"deployed (scores {new:.4f} here)")
        log.info("device %s: deployed release %d (%.4f on its held-out data%s)", self.device_id, release.version, new,
                 "" if old is None else f"; the previous one {old:.4f}")  # fmt: skip

    def _refuse(self, release: Release, reason: str) -> None:
        self.wanted = None
        self._refused.add(release.version)
        self.outcome = (release.version, f"refused: {reason}")
        log.warning("device %s: not deploying release %d: %s", self.device_id, release.version, reason)
