"""The fleet's current model release, as the coordinator hands it out: its frame to every online board that does not
run it (on the board's task topic, the path every server frame takes, on Mosquitto and on the cluster alike), and
its ONNX model in chunks, within a byte budget per board."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import BlobChunk, BlobRequest, BlobStore, ProtocolError, Release, iter_chunks

from ._limits import ByteBudget

__all__ = ["ReleaseServing"]


@dataclass
class ReleaseServing:
    release: Release | None = None
    frame: bytes = b""  # as the server's release book sealed it (signed in a secured fleet)
    _budgets: dict[str, ByteBudget] = field(default_factory=dict)

    def offer(self, release: Release, frame: bytes, model: bytes, store: BlobStore) -> bool:
        """Make ``release`` the one handed out (its model into ``store``); whether it is another than before."""
        if self.release is not None and self.release == release and self.frame == frame:
            return False
        if store.put(model) != release.model_id:
            raise ProtocolError("bad-blob-hash", f"release {release.version}'s model is not its sha256")
        self.release, self.frame = release, frame
        self._budgets.clear()
        return True

    def wanted_by(self, running: int | None) -> bool:
        """Whether a board that runs release ``running`` (None: none) should hear of the current one."""
        return self.release is not None and running != self.release.version

    def serves(self, blob_id: str) -> bool:
        return self.release is not None and blob_id == self.release.model_id

    def chunks(self, device_id: str, request: BlobRequest, store: BlobStore, chunk_size: int,
               now: float) -> list[BlobChunk]:  # fmt: skip
        """The chunks of the release's model ``request`` asks for; ProtocolError past the board's budget."""
        assert self.release is not None
        budget = self._budgets.get(device_id)
        if budget is None:
            budget = self._budgets[device_id] = ByteBudget.for_task(self.release.model_size, now)
        chunks = list(iter_chunks(store.get(request.blob_id), chunk_size, request.chunks))
        if not budget.take(sum(len(c.data) for c in chunks), now):
            raise ProtocolError("rate-limited", f"{device_id} asked for release {self.release.version} too often")
        return chunks
