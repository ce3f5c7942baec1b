"""``genfl-edge``: the device CLI. One thin module per command group."""

from ._app import app, main

__all__ = ["app", "main"]
