"""Learning curves (validation NDCG@10 against training seconds) of the SASRec rows, as a PNG next
to RESULTS.md (issue #14 item 3).

    python benchmarks/curves.py --collect LABEL=RUN_DIR ...   # store curves from runs' train logs
    python benchmarks/curves.py                               # render curves.png + the section

A run directory's `train_log.json` (written by the Trainer: one record per epoch with
`epoch_seconds`, the validation metrics, and since perf14 `seconds` = wall clock since the start)
becomes one stored curve in benchmarks/curves_runs.json, with the run's test NDCG@10 and best epoch
from its metrics.json. The x axis is cumulative training seconds (`epoch_seconds`; validation
excluded), so curves of runs with different validation cost compare. The peers benchmark's rows
(benchmarks/peers/peers_runs.json: userseq and RecTools on one ML-1M split and budget) are drawn
too. Nothing here trains: it reads what the runs wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "curves_runs.json"
LOCK = HERE / "_work" / "curves.lock"
PNG = HERE / "learning_curves.png"
PEERS = HERE / "peers" / "peers_runs.json"
SECTION = "curves"


def curve_from_run(run: Path) -> dict:
    log = json.loads((run / "train_log.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    total, points = 0.0, []
    for h in log:
        total += h["epoch_seconds"]
        if "valid_ndcg@10" in h:
            points.append([round(total, 2), round(h["valid_ndcg@10"], 4)])
    t = metrics.get("train", {})
    return {"run": str(run), "points": points, "test_ndcg10": metrics["test"]["ndcg@10"],
            "epochs": t.get("epochs"), "best_epoch": t.get("best_epoch"),
            "stopped": t.get("stopped", ""), "dataset": str(metrics.get("data", {}).get(
                "source", "")).split(" ")[0]}


def collect(pairs: list[str]) -> None:
    for pair in pairs:
        label, _, run = pair.partition("=")
        if not run:
            raise SystemExit(f"--collect {pair}: expected LABEL=RUN_DIR")
        row = {"label": label, **curve_from_run(Path(run)), **results.provenance(None)}
        results.save_row(STORE, label, row, LOCK)
        results.log(f"{label}: {len(row['points'])} points, test NDCG@10 {row['test_ndcg10']:.4f}")


def all_curves() -> list[dict]:
    rows = list(results.load_rows(STORE).values())
    for r in results.load_rows(PEERS).values():
        pts = [[c["train_seconds"], c["valid_ndcg10"]] for c in r["curve"]]
        rows.append({"label": f"{r['system']}, ML-1M, {r['minutes']:g}-min budget "
                     f"({r['verdict']})", "points": pts, "test_ndcg10": r["test_ndcg10"],
                     "epochs": r["epochs"], "best_epoch": r["best_epoch"], "dataset": "ml-1m",
                     "stopped": ""})
    return rows


def render(write: bool) -> None:
    rows = all_curves()
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for r in sorted((r for r in rows if r["dataset"] == ds), key=lambda r: r["label"]):
            xs, ys = zip(*r["points"], strict=True) if r["points"] else ((), ())
            ax.plot(xs, ys, marker=".", lw=1, label=f"{r['label']} (test {r['test_ndcg10']:.4f})")
        ax.axhline(0.15 if ds == "ml-1m" else 0.0, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("training seconds (validation excluded)")
        ax.set_ylabel("validation NDCG@10")
        ax.set_title(ds)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)
    lines = [f"`{PNG.name}`: validation NDCG@10 against cumulative training seconds (validation "
             "excluded) for the SASRec runs whose train logs are stored here "
             "(benchmarks/curves_runs.json, collected with `python benchmarks/curves.py --collect "
             "LABEL=RUN_DIR`) and the peers runs (benchmarks/peers/peers_runs.json).", "",
             "| curve | dataset | epochs (best) | last validation NDCG@10 | best validation "
             "NDCG@10 | test NDCG@10 | status |", "|---|---|---|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["label"])):
        vals = [p[1] for p in r["points"]] or [float("nan")]
        unconv = r["best_epoch"] == r["epochs"]
        lines.append(f"| {r['label']} | {r['dataset']} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{vals[-1]:.4f} | {max(vals):.4f} | {r['test_ndcg10']:.4f} | "
                     f"{'unconverged (best epoch = last)' if unconv else 'converged'} |")
    results.publish(SECTION, "Learning curves (validation NDCG@10 vs training seconds)", lines,
                    write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", nargs="+", default=[], metavar="LABEL=RUN_DIR")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    collect(a.collect)
    render(not a.no_write)


if __name__ == "__main__":
    main()
