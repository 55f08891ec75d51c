"""Shared helpers for benchmark scripts: machine description and RESULTS.md sections.

Each script owns one section of benchmarks/RESULTS.md between `<!-- NAME:start -->` and
`<!-- NAME:end -->` and replaces only that section.
"""

from __future__ import annotations

import os
import platform
import re
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
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by its script.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def run_header(script: str, load_before: tuple[float, ...], machine_note: str = "") -> list[str]:
    """The first lines of a section: exact command, date, machine, load average before the run."""
    cmd = f"python benchmarks/{script} " + " ".join(sys.argv[1:])
    return [
        f"Command: `{cmd.strip()}`",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine_description()}, {platform.platform()}{machine_note}",
        f"- Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)} (the cores are shared "
        "with other work: above ~2, timings are inflated)",
    ]


def publish(name: str, title: str, lines: list[str], write: bool = True) -> None:
    """Print a section's lines and, unless `write` is false (--no-write), store them in RESULTS.md."""
    body = "\n".join(lines)
    print(body)
    if write:
        update_section(name, title, body)
