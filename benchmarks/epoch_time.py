"""Seconds per training epoch of SASRec on ML-1M at the issue's reference setting.

d = 64, max length 200, 2 blocks, 1 head, full-softmax CE over all 3,416 items, batch 128: the
setting in which RecTools' SASRec takes about 90 s per epoch on this kind of 2-core machine. Each
variant trains a few epochs in its own `userseq train` process (validation included in the run but
not in the epoch time); the table keeps the fastest epoch and the load average, because the figure
is only meaningful on a quiet machine.

    python benchmarks/epoch_time.py                  # fp32 and bf16 CE matmuls, 3 epochs each
    python benchmarks/epoch_time.py --epochs 2 --variants fp32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import publish, run_header  # noqa: E402

BASE = {"model": {"name": "sasrec", "dim": 64, "layers": 2, "heads": 1, "dropout": 0.1,
                  "max_len": 200},
        "loss": {"name": "ce"}, "train": {"batch_size": 128, "lr": 0.003}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "epoch_time")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows = []
    for variant in args.variants:
        cfg = {**BASE, "loss": {"name": "ce", "logits_dtype": variant}}
        path = args.workdir / f"{variant}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run = args.workdir / variant
        cmd = [sys.executable, "-m", "userseq.cli", "train", "--data", "ml-1m",
               "--config", str(path), "--epochs", str(args.epochs), "--out", str(run),
               "--overwrite", "--quiet"]
        t0 = time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        log = json.loads((run / "train_log.json").read_text())
        secs = [h["epoch_seconds"] for h in log]
        rows.append({"variant": variant, "epochs": secs, "wall": time.time() - t0,
                     "load": os.getloadavg()[0], "valid": log[-1]["valid_ndcg@10"]})
        print(rows[-1], flush=True)
    lines = [*run_header("epoch_time.py", load_before), "",
             "SASRec d=64, max length 200, 2 blocks, 1 head, dropout 0.1, batch 128, "
             "full-softmax CE over 3,416 items "
             "(the issue's reference setting; target <= 20 s per epoch). Epoch time excludes "
             "validation.", "",
             "| CE matmul precision | fastest epoch s | all epochs s "
             "| valid NDCG@10 after the last | load 1m after |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        epochs = ", ".join(f"{s:.1f}" for s in r["epochs"])
        lines.append(f"| {r['variant']} | {min(r['epochs']):.1f} | {epochs} | "
                     f"{r['valid']:.4f} | {r['load']:.1f} |")
    publish("epoch_time", "SASRec training speed on ML-1M (seconds per epoch)", lines,
            write=not args.no_write)


if __name__ == "__main__":
    main()
