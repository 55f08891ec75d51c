"""`userseq tune`: an Optuna search over a next-item run config, chosen on validation only.

The config file is a run config (data / model / loss / train / eval sections, as for
`userseq train --config`) plus a `search:` section and an optional `tune:` section:

    model: {name: sasrec, dim: 64, max_len: 50}
    train: {epochs: 30, patience: 5}
    search:                       # dotted setting -> its range
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}       # float (low/high are floats)
      model.layers: {low: 1, high: 3}                         # int (low/high are ints)
      model.dropout: {low: 0.1, high: 0.5, step: 0.1}
      model.dim: [32, 64, 128]                                # categorical: a list of choices
    tune: {pruner: median, startup_trials: 3, warmup_epochs: 2, seed: 0}

Each trial trains the config with the sampled settings (TPE sampler, seeded) on the training part
of the split and reports the validation `train.monitor` after every epoch; the pruner (median or
none) stops a trial whose validation curve falls below the median of earlier trials at the same
epoch (`Trainer.on_validated`). Trials see the split with its test part sealed: reading it is an
error. When the trials or the budget (`--budget-minutes`: no trial starts after it, and a
trial's `train.max_minutes` is capped by what is left) run out, the best config is written to
OUT/best.yaml, every trial to OUT/trials.csv and OUT/trials.json (number, state, validation value,
best epoch, seconds, settings), and the best config is trained once more into OUT/best-run, whose
metrics.json holds the only test evaluation of the search.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from userseq.core.artifacts import write_json, write_text
from userseq.core.config import read_yaml_mapping
from userseq.core.errors import ConfigError, UserseqError
from userseq.data.eventlog import EventLog
from userseq.data.split import EvalSet, Split, make_split
from userseq.nextitem.config import RunConfig, check_monitor, split_kwargs

TUNE_KEYS = {"pruner", "startup_trials", "warmup_epochs", "seed"}


class SealedTest(EvalSet):
    """The test part of a split during the search: any read is an error (tuning chooses on
    validation only; the test split is read once, by the final evaluation)."""

    def __init__(self) -> None:  # no fields: nothing to read
        pass

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__len__", "__getitem__", "__iter__"):
            return object.__getattribute__(self, name)
        raise UserseqError(f"tune: a trial read the test split ({name}); trials may use the "
                           "training and validation parts only.")

    def __len__(self) -> int:
        raise UserseqError("tune: a trial read the test split (len); trials may use the "
                           "training and validation parts only.")


def sealed(split: Split) -> Split:
    """`split` with its test part replaced by `SealedTest`."""
    return replace(split, test=SealedTest())


def read_tune_config(path: str | Path) -> tuple[RunConfig, dict[str, Any], dict[str, Any]]:
    """(the run config, the search space, the tune settings) of a tune config file."""
    data = dict(read_yaml_mapping(path) or {})
    search = data.pop("search", None)
    options = data.pop("tune", None) or {}
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{path}: no `search:` section; add one mapping dotted settings to "
                          "ranges, e.g. `search: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: "
                          "true}}` (docs/tuning.md).")
    if not isinstance(options, dict) or set(options) - TUNE_KEYS:
        bad = sorted(set(options) - TUNE_KEYS) if isinstance(options, dict) else options
        raise ConfigError(f"{path}: tune: unknown setting(s) {bad}; allowed: "
                          f"{', '.join(sorted(TUNE_KEYS))}.")
    if options.get("pruner", "median") not in ("median", "none"):
        raise ConfigError(f"{path}: tune.pruner must be median or none (got "
                          f"{options['pruner']!r}).")
    cfg = RunConfig.parse(data, str(path))
    for key, spec in search.items():
        _check_space(path, key, spec)
        try:  # every key must be a setting of the config, with a valid value
            cfg.updated({key: _example(spec)}, source=f"{path}: search")
        except ConfigError as e:
            raise ConfigError(str(e)) from None
    return cfg, search, options


def _check_space(path: str | Path, key: str, spec: Any) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{path}: search.{key}: an empty list of choices.")
        return
    if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{path}: search.{key}: give a list of choices or {{low: ..., high: "
                          f"...}} (optional log: true, step: ...); got {spec!r}.")
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra:
        raise ConfigError(f"{path}: search.{key}: unknown key(s) {sorted(extra)}; allowed: low, "
                          "high, log, step.")
    if not spec["low"] <= spec["high"]:
        raise ConfigError(f"{path}: search.{key}: low ({spec['low']}) is above high "
                          f"({spec['high']}).")


def _example(spec: Any) -> Any:
    return spec[0] if isinstance(spec, list) else spec["low"]


def _suggest(trial: Any, key: str, spec: Any) -> Any:
    if isinstance(spec, list):
        if all(v is None or isinstance(v, bool | int | float | str) for v in spec):
            return trial.suggest_categorical(key, spec)
        # lists or mappings as choices (e.g. eval.ks, model.l2 grids): chosen by their YAML text
        labels = [yaml.safe_dump(v, default_flow_style=True).strip() for v in spec]
        return spec[labels.index(trial.suggest_categorical(key, labels))]
    is_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool)
                 for k in ("low", "high"))
    if is_int:
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                 log=bool(spec.get("log", False)))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                               step=spec.get("step"), log=bool(spec.get("log", False)))


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserseqError("userseq tune needs Optuna: pip install 'userseq[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune(config: str | Path, log: EventLog, out_dir: str | Path, trials: int,
         budget_minutes: float | None = None, split: Split | None = None,
         quiet: bool = True, progress: Any = None) -> dict[str, Any]:
    """Run the search of `config` on `log` (see the module docstring); returns the summary also
    written to OUT/tune.json. `progress(message)` is called after each trial."""
    from userseq.nextitem.estimator import NextItemRecommender

    optuna = _optuna()
    if trials <= 0:
        raise UserseqError(f"--trials must be a positive integer (got {trials}).")
    if budget_minutes is not None and budget_minutes <= 0:
        raise UserseqError(f"--budget-minutes must be positive (got {budget_minutes}).")
    base, space, options = read_tune_config(config)
    check_monitor(base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split or make_split(log, base.data.split, **split_kwargs(base))
    trial_split = sealed(split)
    monitor, mode = base.train.monitor, base.train.monitor_mode
    seed = int(options.get("seed", 0))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=int(options.get("startup_trials", 3)),
                                          n_warmup_steps=int(options.get("warmup_epochs", 1)))
              if options.get("pruner", "median") == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    t_start = time.time()
    deadline = None if budget_minutes is None else t_start + 60 * budget_minutes
    records: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = {k: _suggest(trial, k, spec) for k, spec in space.items()}
        over = dict(params)
        if deadline is not None:  # a trial never runs past the search budget
            left = max((deadline - time.time()) / 60, 0.05)
            cap = base.train.max_minutes
            over["train.max_minutes"] = round(min(cap, left) if cap else left, 3)
        cfg = base.updated(over, source=f"trial {trial.number}")
        curve: list[float] = []

        def report(epoch: int, metrics: dict[str, float]) -> str | None:
            curve.append(float(metrics[monitor]))
            trial.report(float(metrics[monitor]), epoch)
            return f"pruned at epoch {epoch}" if trial.should_prune() else None

        t0 = time.time()
        rec = NextItemRecommender(config=cfg).fit(log, trial_split, quiet=quiet,
                                                  on_validated=report)
        tr = rec.train_state_
        record = {"number": trial.number, "params": params, "value": tr["best_valid"],
                  "best_epoch": tr["best_epoch"], "epochs": tr["epochs"],
                  "seconds": round(time.time() - t0, 2), "stopped": tr["stopped"],
                  "curve": curve}
        records.append(record)
        if str(tr["stopped"]).startswith("pruned"):
            record["state"] = "PRUNED"
            raise optuna.TrialPruned(tr["stopped"])
        record["state"] = "COMPLETE"
        return float(tr["best_valid"])

    def after(study: Any, frozen: Any) -> None:
        if progress is not None:
            r = records[-1] if records and records[-1]["number"] == frozen.number else {}
            progress(f"trial {frozen.number}: {frozen.state.name} {monitor} "
                     f"{r.get('value', float('nan')):.4f} {r.get('params', frozen.params)}")

    timeout = None if budget_minutes is None else 60 * budget_minutes
    study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[after],
                   catch=())
    done = [r for r in records if r.get("state") == "COMPLETE"]
    if not done:
        raise UserseqError(f"tune: no trial completed within the budget ({len(records)} "
                           "started); raise --budget-minutes or lower train.epochs.")
    search_seconds = time.time() - t_start
    best = study.best_trial
    best_params = next(r["params"] for r in records if r["number"] == best.number)
    best_cfg = base.updated(best_params, source="best trial")
    write_text(best_cfg.to_yaml(), out / "best.yaml")
    _write_trials(records, out, monitor)
    # the only test evaluation of the search: the best config, trained again on the full split
    run_dir = out / "best-run"
    t0 = time.time()
    final = NextItemRecommender(config=best_cfg).fit(log, split, run_dir=run_dir, quiet=quiet)
    summary = {
        "config": str(config), "trials": len(records), "complete": len(done),
        "pruned": sum(r.get("state") == "PRUNED" for r in records),
        "budget_minutes": budget_minutes, "search_seconds": round(search_seconds, 2),
        "monitor": monitor, "best_trial": best.number, "best_valid": best.value,
        "best_params": best_params, "final_run": str(run_dir),
        "final_seconds": round(time.time() - t0, 2), "final_train": final.train_state_,
        "test": _read_test(run_dir),
    }
    write_json(summary, out / "tune.json")
    return summary


def _read_test(run_dir: Path) -> dict[str, Any]:
    from userseq.core.artifacts import read_json

    return read_json(run_dir / "metrics.json")["test"]


def _write_trials(records: list[dict[str, Any]], out: Path, monitor: str) -> None:
    write_json(records, out / "trials.json")
    rows = [{"number": r["number"], "state": r.get("state", "FAIL"), f"valid_{monitor}": r["value"],
             "best_epoch": r["best_epoch"], "epochs": r["epochs"], "seconds": r["seconds"],
             **{k: (yaml.safe_dump(v).strip() if isinstance(v, list | dict) else v)
                for k, v in r["params"].items()}} for r in records]
    df = pl.DataFrame(rows)
    df.write_csv(out / "trials.csv")
