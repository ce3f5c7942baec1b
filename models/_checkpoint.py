"""Reading model files: safetensors checkpoints with the model's name in their metadata."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from protocol import ModelError, TensorDict

__all__ = ["checkpoint_classes", "read_checkpoint"]


def read_checkpoint(path: Path, model_name: str | None = None) -> tuple[str, TensorDict]:
    """(model name, tensors) of a checkpoint; a corrupt or truncated file is a ModelError naming it."""
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="np") as handle:  # type: ignore[no-untyped-call]
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    name = model_name or metadata.get("model")
    if not name:
        raise ModelError(f"{path}: the checkpoint does not name its model; pass --model")
    return name, tensors


def checkpoint_classes(path: Path) -> tuple[str, ...] | None:
    """The fleet's class list a checkpoint was trained with (its ``classes`` metadata), or None if it names
    none (or names them unreadably); reads only the header."""
    import json

    from protocol import GenflError, validate_classes

    try:
        with safe_open(str(path), framework="np") as handle:  # type: ignore[no-untyped-call]
            text = (handle.metadata() or {}).get("classes")
        return None if text is None else validate_classes(json.loads(text))
    except (SafetensorError, OSError, ValueError, RecursionError, GenflError):
        return None
