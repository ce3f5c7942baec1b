"""Tables for people: the per-device label histogram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.table import Table

__all__ = ["histogram_table"]


def histogram_table(classes: Sequence[str], histogram: np.ndarray, title: str) -> Table:
    """One row per device, one column per class ('.' for none), and a total."""
    table = Table(title=title)
    table.add_column("device")
    for name in classes:
        table.add_column(name[:8], justify="right")
    table.add_column("total", justify="right")
    for index, row in enumerate(histogram):
        table.add_row(f"device-{index:03d}", *[str(int(v)) if v else "." for v in row], str(int(row.sum())))
    return table
