"""Options the two programs' commands share (``genfl-server`` imports them from here: it sits above the edge)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class ExportFormat(str, Enum):
    ONNX = "onnx"


OnnxOut = Annotated[Path, typer.Option(help="Where to write the .onnx file.")]
FormatOption = Annotated[ExportFormat, typer.Option("--format", help="The model file's format.")]
Int8Option = Annotated[bool, typer.Option("--int8/--fp32", help="Quantize to int8 (static QDQ), or keep float.")]
