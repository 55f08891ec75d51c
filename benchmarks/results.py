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


# --- Quiet, reproducible runs -------------------------------------------------------------------
# A benchmark calls `ensure_quiet()` first: it re-runs itself under ../shared/tools/quiet-run (the
# machine-wide lock, and a wait for a quiet machine) when that tool exists and it is not already
# under it. Inside, `LoadMonitor` samples the load average like quiet-run does, so every stored row
# carries its own verdict ("clean" / "contended"; "unchecked" without the monitor).

QUIET_RUN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "quiet-run"


def ensure_quiet(no_quiet: bool = False) -> None:
    """Re-execute this script under quiet-run (lock + wait for a quiet machine) when available.

    `USERSEQ_DEV_LOCK` (optional): a lock file taken exclusively once quiet-run's lock is held,
    so development work that takes it shared (unit tests) pauses only while a benchmark measures,
    not while one waits in quiet-run's queue.
    """
    tool = Path(os.environ.get("USERSEQ_QUIET_RUN", QUIET_RUN))
    if no_quiet or os.environ.get("USERSEQ_UNDER_QUIET_RUN") == "1" or not tool.exists():
        return
    env = dict(os.environ, USERSEQ_UNDER_QUIET_RUN="1")
    run = [sys.executable, *sys.argv]
    lock = os.environ.get("USERSEQ_DEV_LOCK")
    if lock:  # inside quiet-run: queued benchmarks do not hold it, only the measuring one.
        # At most 3 minutes: a dev command still holding it then is idle or hung (quiet-run has
        # already seen a quiet machine), and the load monitor reports any contention anyway.
        run = ["bash", "-c", 'exec 9>"$0"; flock -x -w 180 9 || echo "ensure_quiet: dev lock '
               'still held after 180 s; measuring anyway (see the load verdict)" >&2; '
               'exec "$@"', lock, *run]
    cmd = [str(tool), "--", *run]
    os.execvpe(cmd[0], cmd, env)


class LoadMonitor:
    """Samples the 1-minute load average every `every` seconds while a block runs.

    verdict: "contended" when any sample exceeded cores + 0.75 (quiet-run's rule), else "clean".
    """

    def __init__(self, every: float = 5.0) -> None:
        import threading

        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = self.t1 = 0.0

    def _sample(self) -> None:
        try:
            self.samples.append(os.getloadavg()[0])
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> LoadMonitor:
        self.t0 = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.t1 = time.perf_counter()

    @property
    def verdict(self) -> str:
        if not self.samples:
            return "unchecked"
        return "contended" if max(self.samples) > (os.cpu_count() or 1) + 0.75 else "clean"

    def record(self) -> dict:
        """What a stored row keeps about the conditions of its run."""
        s = self.samples or [float("nan")]
        return {
            "verdict": self.verdict,
            "load_mean": round(sum(s) / len(s), 2),
            "load_max": round(max(s), 2),
            "wall_s": round(self.t1 - self.t0, 2),
            "under_quiet_run": os.environ.get("USERSEQ_UNDER_QUIET_RUN") == "1",
        }


def git_commit() -> str:
    """The short commit of the checkout the benchmark runs from (+ '-dirty' with local edits)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(monitor: LoadMonitor | None = None, **extra) -> dict:
    """Command, commit, machine, date and (with a monitor) load verdict for one stored row."""
    row = {
        "command": "python benchmarks/" + Path(sys.argv[0]).name + " " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine_description(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if monitor is not None:
        row.update(monitor.record())
    row.update(extra)
    return row


def mean_std(values) -> str:
    """'0.1234 ± 0.0012 (n=3)' for a list of numbers (sample std; n=1 shows no ±)."""
    vals = [float(v) for v in values]
    if not vals:
        return "—"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.4f} (n=1)"
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{m:.4f} ± {sd:.4f} (n={len(vals)})"
