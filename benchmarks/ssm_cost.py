"""Training cost against sequence length: attention (SASRec) vs the S4D state-space encoder (ssm).

For each L in --lengths and each model, one training step (forward + full-softmax CE over a
synthetic catalogue + backward + Adam) on synthetic sequences, with the same width, depth and
tokens per step (batch = max(1, tokens // L)). Each cell runs in its own subprocess: time per
step (median of --steps after one warm-up step) and the process's peak RSS growth over the
step (MB). A cell whose first step exceeds --max-step-seconds is reported as "too slow (> limit)";
one whose estimated attention scores exceed --max-gb is not run ("skipped: memory > limit").

    python benchmarks/ssm_cost.py                           # L = 50 .. 20,000
    python benchmarks/ssm_cost.py --lengths 50 200 --steps 5 --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "ssm_cost_runs.json"
LOCK = HERE / "_work" / "ssm_cost.lock"
PNG = HERE / "ssm_cost.png"
MODELS = ("sasrec", "ssm")


def cell(model: str, L: int, tokens: int, dim: int, layers: int, n_items: int, steps: int,
         limit: float, threads: int) -> dict:
    """Run in a subprocess: the timings of one (model, L) cell."""
    import resource
    import time

    import numpy as np
    import torch

    from userseq.encoders import build_encoder, encoder_config
    from userseq.losses import full_ce

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B = max(1, tokens // L)
    enc = build_encoder(encoder_config(model, dim=dim, layers=layers, max_len=L, dropout=0.1),
                        n_items)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    x = torch.randint(1, n_items + 1, (B, L + 1))

    def step() -> float:
        t0 = time.perf_counter()
        inputs, targets = x[:, :-1], x[:, 1:]
        h = enc(inputs, inputs > 0)
        loss = full_ce(h.reshape(-1, dim), targets.reshape(-1), enc.items.output_matrix())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = step()
    out = {"model": model, "L": L, "batch": B, "tokens": B * L}
    if first > limit:
        out.update(status=f"too slow (first step {first:.0f} s > {limit:.0f} s)",
                   step_s=first)
    else:
        times = [step() for _ in range(steps)]
        out.update(status="ok", step_s=float(np.median(times)))
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    out["ms_per_1k_tokens"] = 1000 * out["step_s"] / (B * L) * 1000
    return out


def run_cell(args: argparse.Namespace, model: str, L: int) -> dict:
    B = max(1, args.tokens // L)
    est_gb = B * L * L * 4 * 3 * args.layers / 2**30  # scores, softmax, grad per layer (fp32)
    if model == "sasrec" and est_gb > args.max_gb:
        return {"model": model, "L": L, "batch": B, "tokens": B * L,
                "status": f"skipped: attention memory ~{est_gb:.0f} GB > {args.max_gb} GB"}
    call = (model, L, args.tokens, args.dim, args.layers, args.items, args.steps,
            args.max_step_seconds, args.threads)
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import ssm_cost; "
            f"print(json.dumps(ssm_cost.cell(*{call!r})))")
    timeout = args.max_step_seconds * (args.steps + 2) + 60
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "L": L, "batch": B, "tokens": B * L,
                "status": f"too slow (killed after {timeout:.0f} s)"}
    if proc.returncode != 0:
        why = "out of memory" if proc.returncode in (-9, 137) else proc.stderr.strip()[-300:]
        return {"model": model, "L": L, "batch": B, "tokens": B * L, "status": f"failed: {why}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> list[str]:
    by = {(r["model"], r["L"]): r for r in rows}
    lengths = sorted({r["L"] for r in rows})
    lines = ["| L | batch | sasrec step (s) | ssm step (s) | ssm speed-up | sasrec peak MB "
             "| ssm peak MB | verdicts |", "|---|---|---|---|---|---|---|---|"]

    def fmt(r: dict | None, key: str, spec: str) -> str:
        if r is None:
            return "—"
        if r.get("status") != "ok":
            return r.get("status", "—")
        return format(r[key], spec)

    for L in lengths:
        a, s = by.get(("sasrec", L)), by.get(("ssm", L))
        ratio = "—"
        if a and s and s.get("status") == "ok" and "step_s" in a:
            ratio = f"{a['step_s'] / s['step_s']:.1f}x" + ("" if a["status"] == "ok" else " (≥)")
        verdicts = "/".join(r.get("verdict", "-") for r in (a, s) if r)
        batch = (a or s)["batch"]
        lines.append(f"| {L:,} | {batch} | {fmt(a, 'step_s', '.3f')} | {fmt(s, 'step_s', '.3f')} "
                     f"| {ratio} | {fmt(a, 'peak_mb', '.0f')} | {fmt(s, 'peak_mb', '.0f')} "
                     f"| {verdicts} |")
    return lines


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model in MODELS:
        pts = sorted((r["L"], r["step_s"] / r["tokens"] * 1000) for r in rows
                     if r["model"] == model and r.get("status") == "ok")
        if pts:
            ax.loglog(*zip(*pts, strict=True), marker="o", label=model)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("train step ms per token")
    ax.set_title("training cost vs length (same tokens per step)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000, 5000, 20000])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--tokens", type=int, default=10_000, help="tokens per training step")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--items", type=int, default=3_000, help="synthetic catalogue size")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-step-seconds", type=float, default=40.0)
    ap.add_argument("--max-gb", type=float, default=12.0,
                    help="skip attention cells whose score matrices would exceed this")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        for L in args.lengths:
            for model in args.models:
                results.log(f"{model} L={L}")
                with results.LoadMonitor() as mon:
                    r = run_cell(args, model, L)
                r.update(results.provenance(mon, seeds=[0], data="synthetic (uniform random "
                                            f"items, {args.items} items)"),
                         dim=args.dim, layers=args.layers, threads=args.threads,
                         limits={"max_step_seconds": args.max_step_seconds,
                                 "max_gb": args.max_gb})
                results.log(f"  {r.get('status')} step {r.get('step_s', float('nan')):.3f}s")
                results.save_row(STORE, f"{model}/L{L}", r, LOCK)
    rows = list(results.load_rows(STORE).values())
    plot(rows)
    r0 = rows[0] if rows else {}
    lim = r0.get("limits", {})
    lines = [f"Command: `{r0.get('command', '')}` (dates: {results.run_dates(rows)}; machine: "
             f"{r0.get('machine', '-')})", "",
             f"One training step (forward, full-softmax CE over the synthetic catalogue "
             f"({r0.get('data', '-')}), backward, Adam) at d = {r0.get('dim')}, "
             f"{r0.get('layers')} layers, the same tokens per step for every L (batch column), "
             f"torch threads {r0.get('threads')}. Median of the timed steps after a warm-up; "
             "peak MB = growth of the subprocess's peak RSS over the steps. Limits: a cell whose "
             f"first step takes more than {lim.get('max_step_seconds')} s is reported as too "
             "slow; attention cells whose score matrices would exceed "
             f"{lim.get('max_gb')} GB are skipped. The CE over the catalogue is the same for "
             "both models (it bounds the speed-up at short L).", "", *table(rows), "",
             f"Log-log plot: `benchmarks/{PNG.name}` (ms per token; flat = linear in L)."]
    results.publish("ssm_cost", "State-space vs attention: training cost against length", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
