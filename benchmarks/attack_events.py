"""Attacks on wiki-vandals event-sequence detectors (issue #19 item 5) and the adversarial-training
defence. Rows in benchmarks/attack_events_runs.json, rendered into the `attack-events` section of
RESULTS.md. Parts (each one quiet run, <= 6 min):

    python benchmarks/attack_events.py --part detectors   # target transformer + surrogate (seed 1)
    python benchmarks/attack_events.py --part attack      # event-gradient, event-transfer
    python benchmarks/attack_events.py --part defence     # adversarial training, attacked again
    python benchmarks/attack_events.py --part all --sample 3000 --no-write --no-quiet   # smoke

Target: transformer detector (`userseq detect train --data wiki-vandals --model transformer`,
split seed 0); surrogate: the same architecture with 1 layer and training seed 1 on the same
split (a "black box" here is a surrogate trained on the same split, never the target).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "attack_events_runs.json"
LOCK = HERE / "_work" / "attack_events.lock"
WORK = HERE / "_work" / "attack_events"
BASE = {"model.max_len": 50, "train.batch_size": 256, "train.epochs": 6, "train.patience": 2,
        "train.threads": 2, "split_seed": 0}
DETECTORS = {"target": ("transformer", {"model.layers": 2, "train.seed": 0}),
             "surrogate": ("transformer", {"model.layers": 1, "train.seed": 1})}


def load(sample):
    from userseq.detect.data import load_wiki_vandals

    data = load_wiki_vandals()
    if sample:
        from detect_wiki import subsample

        data = subsample(data, sample)
    return data


def train_detector(data, name, args, adversarial=None):
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    model, over = DETECTORS["target" if name.startswith("target") else "surrogate"]
    det = UserDetector(model, overrides={**BASE, **over, "train.max_minutes": args.max_minutes,
                                         "dataset": "wiki-vandals"})
    augment = None
    if adversarial is not None:
        from userseq.detect.augment import augmenter

        augment = augmenter(adversarial)
    m = train_and_evaluate(data, det, WORK / name, quiet=True, augment=augment)
    tr = m["train"]
    return {"test": m["test"], "first_k": m["first_k"], "epochs": tr["epochs"],
            "best_epoch": tr["best_epoch"], "converged": tr["best_epoch"] < tr["epochs"]}


def attack(data, method, target, args, surrogate=None, train_events=False, out=None):
    from userseq.attack.events import run_event_attack

    over = {"max_users": args.max_users, "seed": 0}
    return run_event_attack(WORK / target, data, method, out or WORK / f"att-{method}-{target}",
                            surrogate=WORK / surrogate if surrogate else None, overrides=over,
                            train_events=train_events)


def slim(m):
    keep = ("clean", "attacked", "flip_rate", "flip_rate_ci", "flipped", "flagged_vandals",
            "test_vandals", "flagged_without_room", "attacked_users", "flips_among_attacked",
            "mean_events_appended", "gaps", "setting", "method", "seconds", "train_events",
            "candidates_per_user")
    return {k: m[k] for k in keep if k in m}


def run_part(part, data, args, save):
    if part == "detectors":
        for name in ("target", "surrogate"):
            save(f"detector/{name}", {"kind": "detector", "name": name,
                                      **train_detector(data, name, args)})
    elif part == "attack":
        save("attack/event-gradient", {"kind": "attack", **slim(attack(
            data, "event-gradient", "target", args))})
        save("attack/event-transfer", {"kind": "attack", **slim(attack(
            data, "event-transfer", "target", args, surrogate="surrogate"))})
    elif part == "defence":
        base = attack(data, "event-gradient", "target", args, train_events=True,
                      out=WORK / "att-train-target")
        save("defence/target-adv", {"kind": "detector", "name": "target-adv",
                                    **train_detector(data, "target-adv", args,
                                                     adversarial=WORK / "att-train-target")})
        after = attack(data, "event-gradient", "target-adv", args)
        save("defence/attack-after", {"kind": "defence", "before": slim(base),
                                      "after": slim(after)})


def ci(m):
    lo, hi = m["roc_auc_ci"]
    return f"{m['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def render(rows):
    lines = ["Data: wiki-vandals, split seed 0 (70/10/20 by user). Target: transformer (2 layers, "
             "first 50 events); surrogate: transformer (1 layer, training seed 1) on the same "
             "split. Attacks append up to `steps` events (pages from the user's neighbourhood in "
             "the training page vocabulary, gaps = 10/50/90% quantiles of benign gaps) to each "
             "flagged test vandal; features are recomputed over the whole log before the target "
             "scores them. Flip rate = flagged test vandals no longer flagged / flagged test "
             "vandals (Wilson 95% interval); ROC-AUC brackets: 95% bootstrap.", "",
             "| row | setting | ROC-AUC clean | ROC-AUC attacked | acc clean | acc attacked "
             "| flipped / flagged | flip rate [95% CI] | attacked users | events appended | "
             "verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def line(name, m, verdict):
        lo, hi = m["flip_rate_ci"]
        fr = "n/a" if m["flip_rate"] is None else f"{m['flip_rate']:.3f} [{lo:.3f}, {hi:.3f}]"
        return (f"| {name} | {m['setting']} | {ci(m['clean'])} | {ci(m['attacked'])} "
                f"| {m['clean']['accuracy']:.4f} | {m['attacked']['accuracy']:.4f} "
                f"| {m['flipped']}/{m['flagged_vandals']} | {fr} | {m['attacked_users']} "
                f"| {m['mean_events_appended']:.2f} | {verdict} |")

    for key in ("attack/event-gradient", "attack/event-transfer"):
        if key in rows:
            lines.append(line(key.split("/")[1], rows[key], rows[key]["verdict"]))
    if "defence/attack-after" in rows:
        r = rows["defence/attack-after"]
        lines.append(line("event-gradient vs target (before defence, same run)", r["before"],
                          r["verdict"]))
        lines.append(line("event-gradient vs adversarially trained target (adaptive)",
                          r["after"], r["verdict"]))
    det = [rows[k] for k in ("detector/target", "detector/surrogate", "defence/target-adv")
           if k in rows]
    if det:
        lines += ["", "| detector | ROC-AUC test | acc test | epochs (best) | verdict |",
                  "|---|---:|---:|---|---|"]
        for d in det:
            conv = "" if d["converged"] else " unconverged"
            lines.append(f"| {d['name']} | {d['test']['roc_auc']:.4f} | "
                         f"{d['test']['accuracy']:.4f} | {d['epochs']} ({d['best_epoch']}){conv} "
                         f"| {d['verdict']} |")
    cmds = sorted({r["command"] for r in rows.values()})
    lines += ["", "Commands: " + "; ".join(f"`{c.strip()}`" for c in cmds) + ". One seed "
              "(split 0): the attack is deterministic given the detector; detector seeds vary "
              "by row as stated.", f"Dates: {results.run_dates(rows.values())}."]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["detectors", "attack", "defence", "all"], required=True)
    ap.add_argument("--max-minutes", type=float, default=1.5)
    ap.add_argument("--max-users", type=int, default=400)
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.no_write:
        results.ensure_quiet(args.no_quiet)
    from threadpoolctl import threadpool_limits

    WORK.mkdir(parents=True, exist_ok=True)
    data = load(args.sample)

    parts = ["detectors", "attack", "defence"] if args.part == "all" else [args.part]
    for part in parts:
        t0 = time.time()
        done = []
        with results.LoadMonitor() as mon, threadpool_limits(2):
            run_part(part, data, args, lambda key, row, d=done: d.append((key, row)))
        for key, row in done:
            row.update(results.provenance(mon, users=data.n_users))
            results.log(f"{key}: {row.get('flip_rate', row.get('test', {}).get('roc_auc'))}")
            if not args.no_write:
                results.save_row(STORE, key, row, LOCK)
        results.log(f"part {part}: {time.time() - t0:.0f}s")
    rows = results.load_rows(STORE)
    if rows:
        results.publish("attack-events", "Attacks on event-sequence detectors (wiki-vandals)",
                        render(rows), write=not args.no_write)


if __name__ == "__main__":
    main()
