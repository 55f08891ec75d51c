"""Ingest benchmark: Parquet event log -> EventLog -> CSR sequences -> padded training windows.

    python benchmarks/ingest.py --events 50000000 --users 500000 --items 1000000 --max-len 200

Steps:
  (a) generate a synthetic Parquet log (benchmarks/synthetic.py) unless the file already exists;
      not part of the ingest time;
  (b) `EventLog.read(path)`: read, validate, stable sort by (user, timestamp, row), map ids;
  (c) `log.sequences()`: CSR (offsets, items);
  (d) `training_windows(offsets, items, max_len)`: left-padded (n, max_len + 1) training rows.

(a) and (b)-(d) each run in a fresh subprocess, so the peak RSS reported for the ingest
(`resource.getrusage(RUSAGE_SELF).ru_maxrss` of that process) contains neither the generator's
memory nor that of this small driver process. Results (timings, peak RSS, pass/fail against
the targets) are printed and written to the `ingest` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_SECONDS = 60.0
TARGET_RSS_BYTES = 8e9  # 8 GB
MARK = "INGEST_RESULT "


# ---------------------------------------------------------------------- measurements (child side)
def _rss_now() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_generate(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    from synthetic import write_synthetic_events

    t = time.perf_counter()
    write_synthetic_events(a.path, a.events, a.users, a.items, a.seed)
    out = {"seconds": time.perf_counter() - t, "peak_rss": _rss_peak()}
    print(MARK + json.dumps(out), flush=True)


def child_ingest(a: argparse.Namespace) -> None:
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from userseq.data.batches import training_windows
    from userseq.data.eventlog import EventLog

    steps: list[dict] = []
    base = _rss_now()

    def record(name: str, t0: float) -> None:
        steps.append({"step": name, "seconds": time.perf_counter() - t0, "rss": _rss_now(),
                      "peak_rss": _rss_peak()})

    t = time.perf_counter()
    log = EventLog.read(a.path)
    record("(b) EventLog.read", t)
    t = time.perf_counter()
    offsets, items = log.sequences()
    record("(c) log.sequences() (CSR)", t)
    t = time.perf_counter()
    windows = training_windows(offsets, items, a.max_len)
    record(f"(d) training_windows(max_len={a.max_len})", t)

    lengths = np.diff(offsets)
    out = {
        "steps": steps,
        "total_seconds": sum(s["seconds"] for s in steps),
        "peak_rss": _rss_peak(),
        "rss_after_imports": base,
        "n_events": log.n_events,
        "n_users": log.n_users,
        "n_items": log.n_items,
        "length_median": float(np.median(lengths)),
        "length_max": int(lengths.max()),
        "windows_shape": list(windows.shape),
        "windows_dtype": str(windows.dtype),
        "windows_bytes": int(windows.nbytes),
        "frame_bytes": int(log.frame.estimated_size()),
        "versions": {
            "python": platform.python_version(),
            "polars": pl.__version__,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "polars_threads": pl.thread_pool_size(),
        },
    }
    assert log.n_events == a.events, (log.n_events, a.events)
    assert log.n_users == a.users, (log.n_users, a.users)
    assert windows.shape[1] == a.max_len + 1
    print(MARK + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- driver
def _run_child(mode: str, a: argparse.Namespace, path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--path", str(path),
           "--events", str(a.events), "--users", str(a.users), "--items", str(a.items),
           "--seed", str(a.seed), "--max-len", str(a.max_len)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"{mode} subprocess failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    return json.loads(lines[-1][len(MARK):])


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "ram_bytes": ram,
            "os": f"{platform.system()} {platform.release()}"}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def render(a: argparse.Namespace, command: str, path: Path, gen: dict | None, res: dict,
           mach: dict) -> str:
    """The body of the `ingest` section of RESULTS.md."""
    ok_time = res["total_seconds"] < TARGET_SECONDS
    ok_rss = res["peak_rss"] < TARGET_RSS_BYTES
    v = res["versions"]
    size = path.stat().st_size
    gen_line = (
        f"generated in {gen['seconds']:.1f} s (separate process, peak RSS "
        f"{_gb(gen['peak_rss'])}; not counted)"
        if gen else "already present, reused (generation not counted)"
    )
    lines = [
        f"Command: `{command}`",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {_gb(mach['ram_bytes'])} RAM, "
        f"{mach['os']}",
        f"- 1-min load average just before the ingest: {res['loadavg']:.2f} (other processes "
        f"competing for the {mach['cores']} cores slow the timings down)",
        f"- Software: Python {v['python']}, polars {v['polars']} ({v['polars_threads']} threads), "
        f"numpy {v['numpy']}, pyarrow {v['pyarrow']}",
        f"- Data: synthetic (`benchmarks/synthetic.py`, seed {a.seed}): {res['n_events']:,} "
        f"events, {res['n_users']:,} users, {res['n_items']:,} distinct items (of {a.items:,}); "
        "int64 sparse ids, int64 Unix-second timestamps; user blocks in random order; Zipf-like "
        "(a=1) item popularity; log-normal user activity (median "
        f"{res['length_median']:.0f}, max {res['length_max']:,} events/user). "
        f"Parquet, snappy, {size / 1e6:,.0f} MB; {gen_line}.",
        f"- Output: EventLog frame {_gb(res['frame_bytes'])}; windows "
        f"{tuple(res['windows_shape'])} {res['windows_dtype']} ({_gb(res['windows_bytes'])})",
        "",
        "| step | wall time (s) | RSS after (GB) | peak RSS so far (GB) |",
        "|---|---:|---:|---:|",
    ]
    for s in res["steps"]:
        lines.append(f"| {s['step']} | {s['seconds']:.2f} | {s['rss'] / 1e9:.2f} | "
                     f"{s['peak_rss'] / 1e9:.2f} |")
    lines += [
        f"| **total (b)-(d)** | **{res['total_seconds']:.2f}** | | "
        f"**{res['peak_rss'] / 1e9:.2f}** |",
        "",
        f"RSS after imports (numpy, polars, pyarrow, userseq): {_gb(res['rss_after_imports'])}.",
        "",
        f"- Wall time (b)-(d): {res['total_seconds']:.1f} s, target < {TARGET_SECONDS:.0f} s: "
        f"**{'PASS' if ok_time else 'FAIL'}**",
        f"- Peak RSS (ru_maxrss of the ingest process): {_gb(res['peak_rss'])}, target < "
        f"{_gb(TARGET_RSS_BYTES)}: **{'PASS' if ok_rss else 'FAIL'}**",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000_000)
    ap.add_argument("--users", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(HERE / "_work"))
    ap.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--child", choices=["generate", "ingest"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child == "generate":
        return child_generate(a)
    if a.child == "ingest":
        return child_ingest(a)

    exe = sys.executable
    try:
        exe = os.path.relpath(exe) if Path(exe).absolute().is_relative_to(Path.cwd()) else exe
    except ValueError:
        pass
    command = shlex.join([exe, os.path.relpath(__file__), *sys.argv[1:]])
    path = Path(a.workdir) / f"events_{a.events}_{a.users}_{a.items}_s{a.seed}.parquet"

    gen = None
    if path.exists():
        print(f"(a) reusing {path}")
    else:
        print(f"(a) generating {path} ...", flush=True)
        gen = _run_child("generate", a, path)
        print(f"    {gen['seconds']:.1f} s, peak RSS {_gb(gen['peak_rss'])}, "
              f"{path.stat().st_size / 1e6:,.0f} MB")

    print("(b)-(d) ingest in a fresh process ...", flush=True)
    load = os.getloadavg()[0]
    res = _run_child("ingest", a, path)
    res["loadavg"] = load
    for s in res["steps"]:
        print(f"    {s['step']:<40} {s['seconds']:7.2f} s   RSS {_gb(s['rss'])}   "
              f"peak {_gb(s['peak_rss'])}")
    print(f"    {'total':<40} {res['total_seconds']:7.2f} s   peak RSS {_gb(res['peak_rss'])}")
    ok = res["total_seconds"] < TARGET_SECONDS and res["peak_rss"] < TARGET_RSS_BYTES
    print(f"targets (< {TARGET_SECONDS:.0f} s, < {_gb(TARGET_RSS_BYTES)}): "
          f"{'PASS' if ok else 'FAIL'}")

    if not a.no_results:
        sys.path.insert(0, str(HERE))
        from results import RESULTS, update_section

        update_section("ingest", "Ingest: Parquet -> EventLog -> CSR -> training windows",
                       render(a, command, path, gen, res, machine()))
        print(f"updated {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()
