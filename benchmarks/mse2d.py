"""2D Matryoshka (2DMSE) on next-item recommendation: one training, a quality grid blocks x widths
(issue #14 item 9).

    python benchmarks/mse2d.py --dataset amazon-beauty             # train with loss.mse2d, grid
    python benchmarks/mse2d.py --table-only

SASRec with `loss.mse2d.enabled` (benchmarks/configs/compression-<dataset>.yaml: the compression
rows' recipe and epoch budget, so the plain `full` compression run is the same training without
the 2D objective). The grid reads user vectors after 1..all blocks and truncates user and item
vectors to each prefix width (`NextItemRecommender.evaluate_grid`, also `userseq evaluate RUN
--grid`); test NDCG@10 per cell, the epoch chosen on validation NDCG@10 of the full model. The
same grid of the plain run (when benchmarks/_work/compression/<dataset>-full-1 exists) shows what
2D training buys at the small cells and costs at the full one. Rows: benchmarks/mse2d_runs.json,
RESULTS.md section `mse2d`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "mse2d_runs.json"
LOCK = HERE / "_work" / "mse2d.lock"
WORK = HERE / "_work" / "mse2d"
SECTION = "mse2d"


def grid_of(rec, split) -> dict:
    cells = rec.evaluate_grid(split.test, ks=[10])
    return {f"{int(c['layers'])}x{int(c['dim'])}": round(c["ndcg@10"], 4) for c in cells}


def run(a) -> None:
    from userseq.core.artifacts import read_json
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import RunConfig, split_kwargs
    from userseq.nextitem.estimator import NextItemRecommender

    sets = {k: float(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    cfg = RunConfig.from_yaml(HERE / "configs" / f"compression-{a.dataset}.yaml").updated(
        {"loss.mse2d.enabled": True, "dataset": a.dataset, "train.seed": a.seed, **sets})
    log = load_events(a.dataset, cfg.data)
    split = make_split(log, cfg.data.split, **split_kwargs(cfg))
    tag = "".join(f",{k.split('.')[-1]}={v:g}" for k, v in sets.items())
    if not a.plain_only:
        out = WORK / f"{a.dataset}-s{a.seed}{tag}"
        results.log(f"train {a.dataset} sasrec loss.mse2d {sets}")
        with results.LoadMonitor() as mon:
            rec = NextItemRecommender(config=cfg).fit(log, split, run_dir=out, quiet=True)
            grid = grid_of(rec, split)
        m = read_json(out / "metrics.json")
        row = {"dataset": a.dataset, "variant": "mse2d" + tag, "grid": grid, "train": m["train"],
               "test_ndcg10": m["test"]["ndcg@10"], **results.provenance(mon, seeds=[a.seed],
                                                                         data=a.dataset)}
        results.save_row(STORE, f"{a.dataset}/mse2d{tag}/s{a.seed}", row, LOCK)
    plain_dir = HERE / "_work" / "compression" / f"{a.dataset}-full-1" / f"{a.dataset}-sasrec"
    if a.plain_only and not (plain_dir / "model.safetensors").exists():
        # no compression `full` run here: train the same recipe without the 2D objective
        plain_dir = WORK / f"{a.dataset}-plain-s{a.seed}"
        results.log(f"train {a.dataset} sasrec, plain (loss.mse2d off)")
        NextItemRecommender(config=cfg.updated({"loss.mse2d.enabled": False})).fit(
            log, split, run_dir=plain_dir, quiet=True)
    if (plain_dir / "model.safetensors").exists():
        plain = NextItemRecommender.load(plain_dir)
        with results.LoadMonitor() as mon:
            pgrid = grid_of(plain, split)
        pm = read_json(plain_dir / "metrics.json")
        seed = a.seed if plain_dir.parent == WORK else 42  # the compression rows' seed
        results.save_row(STORE, f"{a.dataset}/plain/s{seed}", {
            "dataset": a.dataset, "variant": "plain (same recipe, loss.mse2d off)",
            "grid": pgrid, "train": pm["train"], "test_ndcg10": pm["test"]["ndcg@10"],
            **results.provenance(mon, seeds=[seed], data=a.dataset)}, LOCK)


def table(write: bool) -> None:
    rows = results.load_rows(STORE)
    lines = ["SASRec (d=64, 2 blocks) trained once with `loss.mse2d.enabled` (per step: the last "
             "block's CE at one sampled width + one earlier block's CE at one sampled width + "
             "KL(last || earlier) over the catalogue on 512 positions, T = 0.3; widths 64, 32, 16, "
             "8); grid cells = test NDCG@10 with user vectors read after N blocks and user/item "
             "vectors cut to the first d dimensions. `plain` = the same recipe and epochs without "
             "the 2D objective (the compression benchmark's `full` row), read the same way.", ""]
    for key in sorted(rows):
        r = rows[key]
        g = r["grid"]
        dims = sorted({int(k.split("x")[1]) for k in g}, reverse=True)
        layers = sorted({int(k.split("x")[0]) for k in g})
        t = r["train"]
        status = "unconverged: best epoch = last" if t["best_epoch"] == t["epochs"] else \
            "converged"
        lines += [f"**{r['dataset']} — {r['variant']}** (seed {r['seeds'][0]}; epochs "
                  f"{t['epochs']} (best {t['best_epoch']}), {status}; {t['seconds']:.0f} s "
                  "training; "
                  f"{r['verdict']}, load max {r['load_max']}; commit {r['commit']}; "
                  f"{r['date']})", "",
                  "| blocks \\ width | " + " | ".join(str(d) for d in dims) + " |",
                  "|---|" + "---:|" * len(dims)]
        for n in layers:
            lines.append(f"| {n} | " + " | ".join(f"{g[f'{n}x{d}']:.4f}" for d in dims) + " |")
        lines.append("")
    cmds = sorted({f"`{r['command'].strip()}`" for r in rows.values()})
    lines.append(f"Commands: {'; '.join(cmds)}.")
    results.publish(SECTION, "2D Matryoshka (2DMSE): blocks x widths from one training", lines,
                    write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", nargs="*", default=[], metavar="loss.mse2d.KEY=NUMBER",
                    help="numeric overrides of the 2D objective (e.g. loss.mse2d.kl_weight=0)")
    ap.add_argument("--plain-only", action="store_true",
                    help="only the plain run's grid: the compression `full` run if it exists, "
                    "else the same recipe trained here without loss.mse2d")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    a = ap.parse_args()
    if not a.table_only:
        results.ensure_quiet(a.no_quiet)
        WORK.mkdir(parents=True, exist_ok=True)
        run(a)
    table(not a.no_write)


if __name__ == "__main__":
    main()
