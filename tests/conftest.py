"""Shared fixtures: small event tables and files, a tiny model config, and an in-process CLI
runner."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pytest

# --------------------------------------------------------------------------- small event tables


@pytest.fixture
def tiny_frame() -> pl.DataFrame:
    """Seven events, deliberately not sorted by user or time, with a timestamp tie (u2 at t=5)."""
    return pl.DataFrame(
        {
            "user_id": ["u2", "u1", "u2", "u1", "u3", "u2", "u1"],
            "item_id": ["b", "a", "c", "c", "a", "a", "b"],
            "timestamp": [5, 3, 5, 1, 7, 2, 2],
        }
    )


def synthetic_events(
    n_users: int = 60, n_items: int = 30, length: int = 15, seed: int = 0
) -> pl.DataFrame:
    """A learnable log: each user walks the catalogue in steps of +1 (next item = last item + 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(length):
            rows.append((f"u{u}", f"i{(start + t) % n_items}", 1_700_000_000 + 60 * t + u))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "events.csv"
    synthetic_events().write_csv(path)
    return path


TINY_MODEL_YAML = """\
model:
  dim: 16
  max_len: 20
train:
  batch_size: 32
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_MODEL_YAML)
    return path


# --------------------------------------------------------------------------- the command line


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error(self) -> str:
        """stderr with whitespace collapsed, for substring checks."""
        return " ".join(self.stderr.split())


def invoke_cli(*args: object) -> CliResult:
    """Run `userseq ARGS` in-process through `userseq.cli.main` (the console-script entry point).

    `main` turns a UserseqError into a message on stderr and exit code 2. Any other exception is
    not caught here: it propagates into the test with its traceback (a userseq bug).
    """
    from userseq.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = ["userseq", *map(str, args)]
    with mock.patch.object(sys, "argv", argv), redirect_stdout(out), redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    return invoke_cli
