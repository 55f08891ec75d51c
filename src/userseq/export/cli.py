"""`userseq export RUN --format onnx --out FILE` (registered by userseq.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from userseq.core.cli import RunDirArg, out
from userseq.core.errors import UserseqError

FORMATS = ("onnx",)


def export_cmd(
    run_dir: RunDirArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="file to write (e.g. model.onnx)")],
    fmt: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
) -> None:
    """Export a next-item run's user encoder or a CTR run's click model (ONNX), checked against
    PyTorch (max abs difference <= 1e-4); writes FILE and FILE.json."""
    if fmt not in FORMATS:
        raise UserseqError(f"--format {fmt!r}: supported formats are {', '.join(FORMATS)}.")
    from userseq.export.onnx import export_onnx

    info = export_onnx(run_dir, out_path)
    out.print(f"wrote {out_path} ({info['task']} '{info['model']}': inputs "
              f"{', '.join(info['inputs'])} -> {', '.join(info['outputs'])}; max abs difference "
              f"to PyTorch {info['max_abs_diff']:.2e} on {info['check_rows']} rows) and "
              f"{out_path}.json")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
