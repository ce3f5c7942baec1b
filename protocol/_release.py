"""A model release: the frame that tells the fleet's boards which ONNX model to run.

The server keeps each release as this frame, sealed by its guard (signed with the server's key in a secured
fleet), and publishes the current one retained on the fleet's ``release`` topic: the very bytes a board
checks with the key it pinned at enrollment, and a board's own application can check them again. The model
is a blob named by its sha256 (``model_id``), fetched in chunks like every other blob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ._classes import validate_classes
from ._errors import GenflError, ProtocolError
from ._fields import bad_field, check_float, check_int, check_sha256

__all__ = ["MAX_RELEASE_BYTES", "Release"]

MAX_RELEASE_BYTES = 256 * 1024 * 1024  # an ONNX model a board may be asked to fetch


@dataclass(frozen=True)
class Release:
    TYPE: ClassVar[str] = "release"
    version: int  # 1, 2, ...: the server numbers its releases
    model_id: str  # sha256 of the ONNX bytes
    model_size: int
    model_name: str
    classes: tuple[str, ...]  # the fleet's class list, the model's output order
    input_shape: tuple[int, int, int]  # channels, height, width of its input (float32 pixels in [0, 1])
    int8: bool
    round: int  # the round whose model it is (0: a checkpoint from outside the journal)
    accuracy: float | None  # the server's test accuracy of that model, if it evaluates
    created: float  # the server's clock (Unix seconds)
    note: str = ""

    def __post_init__(self) -> None:
        check_int("version", self.version, 1, 2**31)
        check_sha256("model_id", self.model_id)
        check_int("model_size", self.model_size, 1, MAX_RELEASE_BYTES)
        if not isinstance(self.model_name, str) or not 0 < len(self.model_name) <= 64:
            raise bad_field("model_name must be a short string")
        try:
            validate_classes(self.classes)
        except GenflError as exc:
            raise bad_field(f"classes: {exc}") from exc
        if not isinstance(self.input_shape, tuple) or len(self.input_shape) != 3:
            raise bad_field("input_shape must be (channels, height, width)")
        for size in self.input_shape:
            check_int("input_shape[]", size, 1, 4096)
        if not isinstance(self.int8, bool):
            raise bad_field("int8 must be a boolean")
        check_int("round", self.round, 0, 2**31)
        if self.accuracy is not None:
            check_float("accuracy", self.accuracy, 0.0, 1.0)
        check_float("created", self.created, 0.0, 1e11)
        if not isinstance(self.note, str) or len(self.note) > 500:
            raise bad_field("note must be text of at most 500 characters")

    def to_wire(self) -> tuple[dict[str, Any], bytes]:
        header = {"version": self.version, "model_id": self.model_id, "model_size": self.model_size,
                  "model_name": self.model_name, "classes": list(self.classes), "input_shape": list(self.input_shape),
                  "int8": self.int8, "round": self.round, "accuracy": self.accuracy, "created": self.created,
                  "note": self.note}  # fmt: skip
        return header, b""

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> Release:
        if body:
            raise ProtocolError("bad-frame", "a release carries no body")
        classes, shape = header.get("classes"), header.get("input_shape")
        if not isinstance(classes, list) or not isinstance(shape, list):
            raise bad_field("classes and input_shape must be lists")
        accuracy = header.get("accuracy")
        if isinstance(accuracy, float) and math.isnan(accuracy):
            raise bad_field("accuracy is not a number")
        return cls(header.get("version"), header.get("model_id"), header.get("model_size"),  # type: ignore[arg-type]
                   header.get("model_name"), tuple(classes), tuple(shape), header.get("int8"),  # type: ignore[arg-type]
                   header.get("round"), accuracy, header.get("created"), header.get("note", ""))  # type: ignore[arg-type]  # fmt: skip

    def describe(self) -> str:
        kind = "int8" if self.int8 else "float"
        accuracy = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        return (f"release {self.version}: {self.model_name} {kind}, round {self.round}, accuracy {accuracy}, "
                f"{self.model_size} B, sha256 {self.model_id[:12]}")  # fmt: skip
