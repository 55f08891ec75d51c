"""Compressed item tables: bytes of the item table vs full-ranking NDCG@10 at 2x / 8x / 32x, on
ML-1M, amazon-beauty and amazon-scientific, the memory/quality frontier as a PNG
(benchmarks/compression_frontier.png), and a training-memory scaling run on a 10M-item synthetic
catalogue. Rows record their provenance (command, commit, load verdict: results.provenance); the
script waits for a quiet machine (results.ensure_quiet) unless --no-quiet.

* `--part table`: SASRec trained with each table (hash, qr, unified, matryoshka) at each ratio, one
  `userseq train` subprocess per row, plus post-training `userseq compress` (int8, PQ) of the full
  table run. Rows are kept in benchmarks/compression_runs.json.
* `--part scale`: peak RSS of training (sampled softmax, 1,024 negatives) with a hashed table on a
  10M-item catalogue, and with a full table on a smaller catalogue for the extrapolation; each in
  its own subprocess.

    python benchmarks/compression.py --part table --jobs 2  # budgets: configs' train.max_minutes
    python benchmarks/compression.py --part table --datasets amazon-beauty --ratios 8 32
    python benchmarks/compression.py --part scale --items 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import results
import yaml
from nextitem import run_one
from results import load_rows, machine_description, publish, run_dates, run_userseq, save_row

HERE = Path(__file__).resolve().parent
STORE = HERE / "compression_runs.json"
LOCK = HERE / "_work" / "compression_runs.lock"  # several invocations may add rows at once
CONFIGS = {"ml-1m": HERE / "configs" / "compression-ml-1m.yaml",
           "amazon-beauty": HERE / "configs" / "compression-amazon-beauty.yaml",
           "amazon-scientific": HERE / "configs" / "amazon-scientific.yaml"}
FRONTIER = HERE / "compression_frontier.png"
METHODS = ("hash", "qr", "unified", "matryoshka")


def _machine() -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return machine_description() + gpu


def _store() -> dict:
    return load_rows(STORE)


def _save(key: str, row: dict) -> None:
    save_row(STORE, key, row, LOCK)


def _compress(run: Path, method: str, out: Path, ratio: float | None) -> tuple[dict, str]:
    cmd = ["userseq", "compress", str(run), "--method", method, "--out", str(out)]
    if ratio is not None:
        cmd += ["--compression", str(ratio)]
    run_userseq(cmd)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, " ".join(cmd).replace(str(HERE.parent) + "/", "")


def train_part(datasets: list[str], minutes: float, workdir: Path, methods: list[str],
               ratios: list[int], jobs: int = 1, redo: bool = False) -> None:
    """One training run per (dataset, table, ratio), `jobs` at a time (each its own process)."""
    from concurrent.futures import ThreadPoolExecutor

    machine = _machine()
    # interleaved by dataset, so that runs at a time are of different datasets; "full" = the
    # baseline
    todo = [(ds, m, r) for m, r in [(m, r) for r in ratios for m in methods] for ds in datasets]
    # rows already measured stay
    todo = [t for t in todo if redo or f"{t[0]}/{t[1]}/{t[2]}" not in _store()]

    def one(job: tuple[str, str, int]) -> None:
        ds, method, ratio = job
        extra = ["--config", str(CONFIGS[ds])]
        extra += [] if method == "full" else ["--item-table", method, "--compression", str(ratio)]
        with results.LoadMonitor() as mon:
            r = run_one(ds, "sasrec", minutes, workdir / f"{ds}-{method}-{ratio}", extra)
        r.update(results.provenance(mon, seeds=[42], data=ds))
        r["cmd"] = r["cmd"].replace(str(HERE.parent) + "/", "").replace(str(workdir) + "/", "")
        train_cfg = yaml.safe_load(CONFIGS[ds].read_text())["train"]
        budget = f"{minutes} min" if minutes else f"{train_cfg['epochs']} epochs"
        r.update(method=method, ratio=ratio, budget=budget, jobs=jobs, machine=machine)
        _save(f"{ds}/{method}/{ratio}", r)
        print(f"== {ds}/{method}/{ratio}: ndcg@10 {r['metrics']['test']['ndcg@10']:.4f} "
              f"bytes {r['metrics']['item_table_bytes']:,}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))


def post_part(datasets: list[str], workdir: Path) -> None:
    """int8 and PQ (8x, 32x) post-training quantization of each dataset's full-table run."""
    machine = _machine()
    for ds in datasets:
        full_run = workdir / f"{ds}-full-1" / f"{ds}-sasrec"
        budget = _store().get(f"{ds}/full/1", {}).get("budget")
        for method, ratio in [("int8", None), ("pq", 8), ("pq", 32)]:
            key = f"{ds}/{method}/{ratio or 4}"
            print(f"== {key}", flush=True)
            with results.LoadMonitor() as mon:
                m, cmd = _compress(full_run, method, workdir / f"{ds}-{method}-{ratio}", ratio)
            _save(key, {"dataset": ds, "method": method, "ratio": ratio or 4, "metrics": m,
                        "cmd": cmd.replace(str(workdir) + "/", ""), "load": os.getloadavg()[1],
                        "budget": budget, **results.provenance(mon, data=ds),
                        "machine": machine})


TABLE_NOTES = [
    "",
    "SASRec (d=64, 2 blocks, max length 50), full-softmax CE, full ranking over the whole "
    "catalogue, seen",
    "items filtered, leave-one-out. ML-1M: benchmarks/configs/compression-ml-1m.yaml (max length "
    "50);",
    "amazon-scientific: benchmarks/configs/amazon-scientific.yaml. Every row of a dataset trains",
    "for the same fixed, short number of epochs (the budget column): the shared 2-core CPU allowed "
    "no more,",
    "and its load varied too much for equal-time budgets to be fair. Rows compare methods at equal "
    "training,",
    "not at convergence (longer training raises every row). Bytes = the item representation as "
    "stored (tables, hash seeds, codes,",
    "codebooks); `full` is the fp32 (n_items + 1) x 64 table. `int8` and `pq` are post-training",
    "(`userseq compress`) on the `full` run: int8 has a fixed ratio (~3.8x), PQ with one-byte "
    "codes",
    "cannot go below 4x (M = dim sub-quantizers), so PQ has no 2x row. Matryoshka trains nested "
    "prefixes",
    "(64, 32, ..., 64/ratio) and scores with the 64/ratio prefix: its bytes are those of the "
    "scoring",
    "matrix; the encoder's input look-up still reads full-width rows (docs/items.md).",
    "",
    "| dataset | method | target ratio | item table bytes | achieved ratio | NDCG@10 | HR@10 "
    "| epochs (best) | budget | machine (runs at a time) | load | verdict | command |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _table_row(r: dict, machines: list[str]) -> str:
    m = r["metrics"]
    t, tab, tr = m["test"], m["item_table"], m.get("train") or {}
    post = r["method"] in ("int8", "pq")
    ep = f"{tr['epochs']} ({tr['best_epoch']})" if not post else "post-training"
    machine = chr(65 + machines.index(r.get("machine", "?")))
    return (
        f"| {r['dataset']} | {r['method']} | {r['ratio']}x | {m['item_table_bytes']:,} | "
        f"{tab['full_fp32_bytes'] / m['item_table_bytes']:.1f}x | {t['ndcg@10']:.4f} | "
        f"{t['hr@10']:.4f} | {ep} | "
        f"{r['budget']} | {machine} ({r.get('jobs', 1)}) | "
        f"{r['load']:.1f} | {r.get('verdict', 'unchecked (before quiet runs)')} | "
        f"`{r['cmd']}` |")


def table_section() -> None:
    rows = [r for r in _store().values() if "method" in r]
    machines = sorted({r.get("machine", "?") for r in rows})
    lines = [
        "Machines (the `machine` column): "
        + "; ".join(f"{chr(65 + i)} = {m}" for i, m in enumerate(machines))
        + ". Load = 5-minute load average",
        "after the row (on A-type 2-core machines above 2 means the CPU was shared).",
        *TABLE_NOTES,
    ]
    order = ["full", *METHODS, "int8", "pq"]
    for r in sorted(rows, key=lambda r: (r["dataset"], order.index(r["method"]), r["ratio"])):
        lines.append(_table_row(r, machines))
    done = {(r["dataset"], r["method"], r["ratio"]) for r in rows}
    missing = [f"{ds} {m} {r}x" for ds in CONFIGS for r in (2, 8, 32) for m in METHODS
               if (ds, m, r) not in done]  # every configured dataset's every method and ratio
    if missing:
        lines += ["", "Not run (the shared CPU's time ran out; `python benchmarks/compression.py "
                  "--part train --datasets DATASET --methods ... --ratios ...` adds them): "
                  f"{', '.join(missing)}."]
    if frontier_png(rows):
        lines += ["", f"Memory/quality frontier (NDCG@10 against item-table bytes, per dataset; "
                  f"the line joins the rows no other row beats on both): `{FRONTIER.name}`."]
    lines += ["", "Generated by `python benchmarks/compression.py --part table` (rows kept in "
              "benchmarks/compression_runs.json; dates: " + run_dates(rows) + ")."]
    publish("compression", "Compressed item tables: bytes vs NDCG@10", lines)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (bytes, quality) points no other point beats on both (fewer bytes and higher
    quality), sorted by bytes."""
    front, best = [], float("-inf")
    for b, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((b, q))
            best = q
    return front


def frontier_png(rows: list[dict]) -> bool:
    """NDCG@10 vs item-table bytes per dataset, with the Pareto frontier; False without rows."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        g = [r for r in rows if r["dataset"] == ds]
        for method in sorted({r["method"] for r in g}):
            pts = [(r["metrics"]["item_table_bytes"], r["metrics"]["test"]["ndcg@10"], r["ratio"])
                   for r in g if r["method"] == method]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method, s=25)
            for b, q, ratio in pts:
                ax.annotate(f"{ratio}x", (b, q), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        front = pareto([(r["metrics"]["item_table_bytes"], r["metrics"]["test"]["ndcg@10"])
                        for r in g])
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="frontier")
        ax.set_xscale("log")
        ax.set_xlabel("item table bytes (log)")
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"{ds} (SASRec, {g[0].get('budget', '')})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FRONTIER, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------- scaling run
def scale_child(n_items: int, table: str, ratio: float, steps: int, eval_users: int,
                out: str) -> None:
    """Train SASRec with sampled softmax on Zipf-distributed synthetic sequences over n_items, then
    one full-ranking validation; write peak RSS and timings."""
    import numpy as np
    import torch

    from userseq.core.trainer import Trainer
    from userseq.encoders import build_encoder
    from userseq.items.factory import build_items, table_report
    from userseq.losses.nextitem import NextItemLoss
    from userseq.metrics.ranking import evaluate, matrix_scorer
    from userseq.nextitem.estimator import NextItemRecommender

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731
    over = {"model.max_len": 50, "model.item_table": table, "loss.name": "sampled_softmax",
            "loss.negatives": 1024, "train.batch_size": 256, "train.epochs": 1}
    if table != "full":
        over["model.compression"] = ratio
    rec = NextItemRecommender("sasrec", overrides=over)
    cfg = rec.config
    t0 = time.time()
    torch.manual_seed(0)
    enc = build_encoder(cfg.model, n_items, build_items(cfg.model, n_items))
    build_s, rss_model = time.time() - t0, rss()
    # Zipf(1) item popularity over the catalogue, as benchmarks/synthetic.py
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1))
    cdf /= cdf[-1]
    rng = np.random.default_rng(0)
    perm = rng.permutation(n_items) + 1

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(perm[np.searchsorted(cdf, rng.random(shape))])

    loss = NextItemLoss(cfg.loss, n_items)

    def batches(epoch: int):
        for _ in range(steps):
            yield draw((256, 51))

    users = draw((eval_users, 50)).numpy()
    targets = draw((eval_users,)).numpy()

    def validate(model):
        u = model.last(torch.from_numpy(users), torch.from_numpy(users) > 0)
        offsets = np.arange(0, 50 * eval_users + 1, 50)
        return evaluate(matrix_scorer(u, model.items.output_matrix()), n_items, targets,
                        (offsets, users.reshape(-1)), ks=[10])

    t1 = time.time()
    state = Trainer(cfg.train, quiet=True).fit(enc, batches, steps,
                                               lambda m, b: rec._loss(m, b, loss), validate)
    res = {**table_report(enc.items, cfg.model), "items": n_items, "table": table,
           "ratio": ratio if table != "full" else 1, "steps": steps,
           "build_s": round(build_s, 1), "train_and_valid_s": round(time.time() - t1, 1),
           "epoch_s": round(state.history[0]["epoch_seconds"], 1),
           "rss_after_build_gb": round(rss_model, 3),
           "peak_rss_gb": round(rss(), 3), "eval_users": eval_users}
    Path(out).write_text(json.dumps(res))


def scale_part(n_items: int, full_items: list[int], ratio: float, steps: int, eval_users: int,
               workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for table, n in [("hash", n_items), *[("full", m) for m in full_items]]:
        out = workdir / f"scale-{table}-{n}.json"
        cmd = [sys.executable, __file__, "--part", "scale-child", "--items", str(n),
               "--table", table, "--ratio", str(ratio), "--steps", str(steps),
               "--eval-users", str(eval_users), "--out", str(out)]
        print("running", table, n, flush=True)
        subprocess.run(cmd, check=True)
        r = json.loads(out.read_text())
        r["load"] = os.getloadavg()[1]
        print(r, flush=True)
        results.append(r)
    _save("scale", {"results": results, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "cmd": f"python benchmarks/compression.py --part scale --items {n_items} "
                           f"--full-items {' '.join(map(str, full_items))} --ratio {ratio} "
                           f"--steps {steps}"})


def _table_name(r: dict) -> str:
    return "full" if r["table"] == "full" else f"{r['table']} {r['ratio']:g}x"


def _extrapolation(res: list[dict], full: list[dict]) -> list[str]:
    """The full fp32 table at the hashed run's catalogue size, extrapolated from the largest
    full-table run."""
    f = max(full, key=lambda r: r["items"])
    n10 = res[0]["items"]
    # full table: weights, gradient, two Adam moments, the trainer's best-epoch copy and the
    # validation matrix: 6 x 4 bytes x d per item, plus what does not grow with the catalogue
    extra = (n10 - f["items"]) * 64 * 6 * 4 / 2**30
    return ["", f"Full fp32 table at {n10:,} items, extrapolated (not run: it would take about "
            f"half of the shared machine's memory): peak RSS at {f['items']:,} items "
            f"({f['peak_rss_gb']:.2f} GiB) + {n10 - f['items']:,} items x 64 dims x 24 bytes "
            "(weights, gradient, two Adam moments, the trainer's best-epoch copy, the validation "
            f"matrix) = {f['peak_rss_gb'] + extra:.1f} GiB: it would fit in 24 GiB too, but with "
            "about 4x the hashed run's memory. The hashed run's peak is mostly the validation "
            "matrix (10M x 64 fp32 = 2.4 GiB); its training alone stays near the RSS after "
            "building."]


def scale_section() -> None:
    s = _store().get("scale")
    if not s:
        return
    res = s["results"]
    full = [r for r in res if r["table"] == "full"]
    lines = [
        f"Machine: {machine_description()} (shared).",
        "",
        "SASRec d=64, max length 50, batch 256, sampled softmax with 1,024 shared negatives "
        "(logQ), Adam;",
        f"synthetic sequences drawn in memory with Zipf(1) item popularity; {res[0]['steps']} "
        "training steps, then",
        f"one full-ranking validation of {res[0]['eval_users']} users over the whole catalogue "
        "(the item matrix is",
        "built in 1M-row chunks). Peak RSS of the whole process (Python + torch included).",
        "",
        "| catalogue | item table | table bytes | peak RSS (train + validation) "
        "| RSS after building the model | s/step | load | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        target = "< 24 GiB: met" if r["peak_rss_gb"] < 24 else "24 GiB: MISSED"
        lines.append(
            f"| {r['items']:,} | {_table_name(r)} | "
            f"{r['item_table_bytes'] / 2**30:.3f} GiB | {r['peak_rss_gb']:.2f} GiB | "
            f"{r['rss_after_build_gb']:.2f} GiB | "
            f"{r['epoch_s'] / r['steps']:.2f} | {r['load']:.1f} | "
            f"{target} |")
    if full:
        lines += _extrapolation(res, full)
    lines += ["", f"Command: `{s['cmd']}` ({s['date']})."]
    publish("compression_scale", "Compressed item tables: training memory at 10M items", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["table", "train", "post", "scale", "scale-child", "report"],
                    default="report")
    ap.add_argument("--jobs", type=int, default=1, help="training runs at a time (table/train)")
    ap.add_argument("--redo", action="store_true",
                    help="retrain rows that are already in the store")
    ap.add_argument("--datasets", nargs="+", default=["ml-1m", "amazon-scientific"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--ratios", nargs="+", type=int, default=[8, 32, 2],
                    help="in the order to run them")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="training budget per run (default: train.max_minutes of the dataset's "
                         "config)")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "compression")
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--full-items", nargs="+", type=int, default=[2_000_000])
    ap.add_argument("--table", default="hash")
    ap.add_argument("--ratio", type=float, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-users", type=int, default=100)
    ap.add_argument("--out")
    ap.add_argument("--no-quiet", action="store_true", help="do not wait for a quiet machine")
    args = ap.parse_args()
    if args.part == "scale-child":
        return scale_child(args.items, args.table, args.ratio, args.steps, args.eval_users,
                           args.out)
    train = args.part in ("table", "train")
    if train or args.part in ("post", "scale"):
        results.ensure_quiet(args.no_quiet)
    if train:  # the full-table baseline first (post-training needs it)
        train_part(args.datasets, args.max_minutes, args.workdir, ["full"], [1], args.jobs,
                   args.redo)
    if args.part in ("table", "post"):
        post_part(args.datasets, args.workdir)
    if train:
        train_part(args.datasets, args.max_minutes, args.workdir, args.methods, args.ratios,
                   args.jobs, args.redo)
    if args.part == "scale":
        scale_part(args.items, args.full_items, args.ratio, args.steps, args.eval_users,
                   args.workdir)
    table_section()
    scale_section()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
