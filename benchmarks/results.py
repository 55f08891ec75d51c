"""Shared helpers for benchmark scripts: machine description, RESULTS.md sections, row stores.

Each script owns one section of benchmarks/RESULTS.md between `<!-- NAME:start -->` and
`<!-- NAME:end -->` and replaces only that section.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}"


def update_section(name: str, title: str, body: str, path: Path = RESULTS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n## {title}\n\n{body.rstrip()}\n{end}"
    new_file = "# Benchmark results\n\nEach section is written by its script.\n"
    text = path.read_text() if path.exists() else new_file
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def fmt_load(load: tuple[float, ...] | list[float], digits: int = 2) -> str:
    """A load average triple as '1.00/0.50/0.25'."""
    return "/".join(f"{x:.{digits}f}" for x in load)


def run_header(script: str, load_before: tuple[float, ...], machine_note: str = "") -> list[str]:
    """The first lines of a section: exact command, date, machine, load average before the run."""
    cmd = f"python benchmarks/{script} " + " ".join(sys.argv[1:])
    return [
        f"Command: `{cmd.strip()}`",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine_description()}, {platform.platform()}{machine_note}",
        f"- Load average (1/5/15 min) before: {fmt_load(load_before)} (the cores are shared "
        "with other work: above ~2, timings are inflated)",
    ]


def publish(name: str, title: str, lines: list[str], write: bool = True) -> None:
    """Print a section's lines and, unless `write` is false (--no-write), store them in
    RESULTS.md."""
    body = "\n".join(lines)
    print(body)
    if write:
        update_section(name, title, body)


def log(msg: str) -> None:
    """One progress line, prefixed with the wall-clock time."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def run_dates(rows) -> str:
    """The distinct `date` fields of stored rows, sorted and comma-separated."""
    return ", ".join(sorted({r["date"] for r in rows}))


def load_rows(store: Path) -> dict:
    """The keyed rows of a `*_runs.json` store ({} before the first run)."""
    return json.loads(store.read_text()) if store.exists() else {}


def save_row(store: Path, key: str, row: dict, lock: Path) -> None:
    """Add (or replace) one row of `store`; several invocations may add rows at once (`lock`)."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        saved = load_rows(store)
        saved[key] = row
        store.write_text(json.dumps(saved, indent=1) + "\n")


def run_userseq(cmd: list[str]) -> None:
    """Run `userseq ...` (cmd[0] == "userseq") in a subprocess; exit with its stderr if it fails.

    Without the console script (e.g. a plain checkout on PYTHONPATH) the same CLI runs as a module.
    """
    exe = Path(sys.executable).with_name("userseq")
    prog = [str(exe)] if exe.exists() else [sys.executable, "-m", "userseq.cli"]
    proc = subprocess.run([*prog, *cmd[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
