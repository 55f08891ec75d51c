"""Hyper-parameter sweep for `userseq train`: several configs in parallel, chosen on VALIDATION
only.

Each variant is a base YAML config plus dotted overrides; every variant trains in its own
`userseq train` subprocess (so they can share one GPU or several cores), and the summary lists the
best validation NDCG@10 of each with its epoch and time. Test metrics are written by `userseq
train` too, but the summary sorts and selects on validation: never pick a setting by its test
score.

    python benchmarks/sweep.py --data ml-1m --model sasrec --base benchmarks/configs/ml-1m.yaml \\
        --variant lr=0.001 --variant lr=0.001,init_std=0.02 --parallel 2 \\
        --out benchmarks/_work/sweep

Override keys are `section.field=value`; a bare field is looked up in model/loss/train/data/eval.

    python benchmarks/sweep.py --table  # render benchmarks/sweeps/*.json into RESULTS.md (sweeps)

A summary JSON records the device it ran on (`--note`) and the exact command; copy the ones worth
keeping to benchmarks/sweeps/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

SECTIONS = ("model", "loss", "train", "data", "eval")


def parse_variant(text: str, fields: dict[str, set[str]]) -> dict[str, dict[str, object]]:
    """'lr=0.001,model.dropout=0.2' -> {'train': {'lr': 0.001}, 'model': {'dropout': 0.2}}."""
    out: dict[str, dict[str, object]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise SystemExit(f"variant '{text}': '{part}' is not key=value")
        key, raw = part.split("=", 1)
        if "." in key:
            section, field = key.split(".", 1)
        else:
            owners = [s for s in SECTIONS if key in fields[s]]
            if len(owners) != 1:
                problem = "ambiguous" if owners else "unknown"
                raise SystemExit(f"variant '{text}': '{key}' is {problem}; "
                                 f"write section.{key} (sections: {', '.join(SECTIONS)})")
            section, field = owners[0], key
        out.setdefault(section, {})[field] = yaml.safe_load(raw)
    return out


def merged(base: dict, overrides: dict) -> dict:
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def summarize(run_dir: Path) -> dict:
    log = json.loads((run_dir / "train_log.json").read_text())
    best = max(log, key=lambda h: h.get("valid_ndcg@10", float("-inf")))
    return {"best_valid_ndcg@10": round(best["valid_ndcg@10"], 4), "best_epoch": best["epoch"],
            "epochs": len(log), "seconds": round(sum(h["epoch_seconds"] for h in log), 1),
            "s_per_epoch": round(min(h["epoch_seconds"] for h in log), 2),
            "valid_curve": [round(h["valid_ndcg@10"], 4) for h in log]}


def render_table(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import update_section

    lines = []
    for f in sorted(folder.glob("*.json")):
        s = json.loads(f.read_text())
        lines += [f"### {f.name}: {s['model']} on {s['data']}, base `{s['base']}`", "",
                  f"{s.get('note', '')} Command: `{s.get('command', '?')}`. "
                  f"Wall {s['wall_s']:.0f} s "
                  f"for all variants in parallel; selected on {s['selected_on']}.", "",
                  "| variant | best valid NDCG@10 | best epoch / epochs "
                  "| s/epoch (fastest, shared device) |",
                  "|---|---:|---:|---:|"]
        for r in s["results"]:
            lines.append(f"| `{r['variant']}` | {r.get('best_valid_ndcg@10', 'failed')} | "
                         f"{r.get('best_epoch')} / {r.get('epochs')} | {r.get('s_per_epoch')} |")
        lines.append("")
    update_section("sweeps", "Hyper-parameter sweeps (validation only)", "\n".join(lines))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--base", type=Path, help="base YAML config")
    ap.add_argument("--variant", action="append", default=[],
                    help="comma-separated overrides (repeatable)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_work" / "sweep")
    ap.add_argument("--summary", type=Path,
                    help="write the summary JSON here (default OUT/summary.json)")
    ap.add_argument("--note", default="",
                    help="free text stored in the summary (device, load, purpose)")
    return ap.parse_args()


def write_jobs(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """One config file and `userseq train` command per variant: (variant, run dir, command)."""
    from userseq.nextitem.config import RunConfig

    fields = {s: set(RunConfig.model_fields[s].annotation.model_fields) for s in SECTIONS}
    base = yaml.safe_load(args.base.read_text()) if args.base else {}
    variants = args.variant or [""]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path, list[str]]] = []
    for i, text in enumerate(variants):
        cfg = merged(base, parse_variant(text, fields))
        name = f"v{i:02d}"
        (args.out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "userseq.cli", "train", "--data", args.data,
               "--model", args.model, "--config", str(args.out / f"{name}.yaml"),
               "--out", str(args.out / name), "--overwrite", "--quiet", "--device",
               args.device]
        if args.max_minutes:
            cmd += ["--max-minutes", str(args.max_minutes)]
        jobs.append((text, args.out / name, cmd))
    return jobs


def run_jobs(jobs: list[tuple[str, Path, list[str]]], parallel: int) -> list[dict]:
    """Run the jobs, `parallel` at a time; one result row per job, in the order they finish."""
    results, running, pending = [], [], list(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            text, run_dir, cmd = pending.pop(0)
            log = open(run_dir.with_suffix(".log"), "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running.append((text, run_dir, proc, log))
        for job in list(running):
            text, run_dir, proc, log = job
            if proc.poll() is None:
                continue
            running.remove(job)
            log.close()
            row = {"variant": text or "(base)", "run": str(run_dir), "returncode": proc.returncode}
            if proc.returncode == 0:
                row.update(summarize(run_dir))
            else:
                row["error"] = run_dir.with_suffix(".log").read_text()[-2000:]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "valid_curve"}), flush=True)
        time.sleep(1)
    return results


def main() -> None:
    if "--table" in sys.argv:
        render_table(Path(__file__).resolve().parent / "sweeps")
        return
    args = parse_args()
    jobs = write_jobs(args)
    t0 = time.time()
    results = run_jobs(jobs, args.parallel)
    results.sort(key=lambda r: -r.get("best_valid_ndcg@10", -1))
    summary = {"data": args.data, "model": args.model, "base": str(args.base),
               "wall_s": round(time.time() - t0, 1),
               "selected_on": "validation NDCG@10", "note": args.note,
               "command": " ".join(["python", "benchmarks/sweep.py", *sys.argv[1:]]),
               "results": results}
    (args.summary or args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for r in results:
        print(f"{r.get('best_valid_ndcg@10', 'FAIL')!s:>8}  epoch {r.get('best_epoch')}/"
              f"{r.get('epochs')}  {r.get('s_per_epoch')} s/epoch  {r['variant']}")


if __name__ == "__main__":
    main()
