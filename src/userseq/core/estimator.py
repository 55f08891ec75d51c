"""`Estimator[ConfigT]`: the one contract of every userseq task (next item, CTR, detection, attack).

Written once here, like scikit-learn's `BaseEstimator` and RecTools' `ModelBase[Config]`:

* construction from a config (`TaskConfig` subclass, a mapping, or None for the defaults) plus
  dotted `overrides`; the resolved config is `est.config`;
* `get_params()` / `set_params()` compatible with `sklearn.base.clone` (the one parameter is the
  config; `set_params(train__lr=1e-3)` or `set_params(**{"train.lr": 1e-3})` change one setting);
* fitted state in attributes with a trailing underscore; `check_is_fitted()` raises
  `NotFittedError` until `fit` or `load` has run;
* `save(dir)` / `Estimator.load(dir)`: a run directory with `estimator.json` (task, format version,
  userseq version), the config as YAML, and the task's own tensors (safetensors) and tables
  (Parquet/JSON), written by the subclass's `_save_state` / read by `_load_state`. Loading checks
  the task and the format version; a run of another task or of a newer userseq is a clear error;
  runs written by userseq 0.1 (format 1, no `estimator.json`) still load;
* integrity (format 3): every file is written under a temporary name and renamed; the manifest
  records the size and SHA-256 of every file `save` wrote, and a completion marker (`COMPLETE`)
  is written last. Loading checks the marker (missing: "unfinished: use --resume") and every
  recorded file (missing, cut, changed or swapped for another run's: a clear error), and refuses
  a run written by a newer userseq;
* `write_metrics(dir, metrics)`: the one `metrics.json` writer (task and format version added).

Subclasses set `task`, `config_class` and `fitted_attribute`, and register themselves simply by
being defined (`ESTIMATORS`); `Estimator.load(dir)` on the base class returns the right subclass.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from safetensors import safe_open

from userseq.core import distributed
from userseq.core.artifacts import COMPLETE_FILE, file_digest, read_json, write_json, write_text
from userseq.core.config import TaskConfig
from userseq.core.errors import ArtifactError, ConfigError, NotFittedError
from userseq.core.registry import Registry
from userseq.core.version import __version__

ConfigT = TypeVar("ConfigT", bound=TaskConfig)
E = TypeVar("E", bound="Estimator[Any]")

FORMAT_VERSION = 3  # 3: file sizes + SHA-256 in the manifest and the COMPLETE marker
MANIFEST = "estimator.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"

ESTIMATORS: Registry[type[Estimator[Any]]] = Registry(
    "task", "Each is a package of userseq (nextitem, ctr, ...).")


class IdMaps:
    """Mixin of the estimators that embed users and items: their original ids, set by fit/load
    (`user_ids_`, `item_ids_`: polars Series; None before)."""

    user_ids_: Any = None
    item_ids_: Any = None

    @property
    def user_ids(self) -> Any:
        """The training users' original ids, in the order of `user_embeddings()`."""
        return self.user_ids_

    @property
    def item_ids(self) -> Any:
        """The catalogue's original item ids (item index i + 1), order of `item_embeddings()`."""
        return self.item_ids_


class Estimator(Generic[ConfigT]):
    """Base class of the task estimators; see the module docstring for the contract."""

    task: ClassVar[str] = ""
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    fitted_attribute: ClassVar[str] = ""  # the attribute that is None until fit/load
    legacy_config_files: ClassVar[tuple[str, ...]] = ()  # format-1 names of the config file

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__dict__.get("task"):
            ESTIMATORS.register(cls.task, cls, config=cls.config_class, replace=True)

    def __init__(self, config: ConfigT | dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.config: ConfigT = self._resolve_config(config, overrides)

    # ------------------------------------------------------------------ config and params
    @classmethod
    def _resolve_config(cls, config: Any, overrides: dict[str, Any] | None) -> ConfigT:
        name = cls.__name__
        if isinstance(config, cls.config_class):
            cfg = config
        elif config is None or isinstance(config, dict):
            cfg = cls.config_class.parse(config, f"{name} config")
        else:
            want = cls.config_class.__name__
            raise ConfigError(f"{name}: config must be a {want}, a mapping or None "
                              f"(got {type(config).__name__}).")
        over = {k: v for k, v in (overrides or {}).items() if v is not None}
        return cfg.updated(over, source=f"{name} arguments") if over else cfg  # type: ignore[return-value]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """{"config": the config}; with deep=True also every setting as `section__key`
        (scikit-learn's nested-parameter spelling, usable in a parameter grid)."""
        params: dict[str, Any] = {"config": self.config}
        if deep:
            params.update({k.replace(".", "__"): v for k, v in self.config.flat().items()})
        return params

    def set_params(self: E, **params: Any) -> E:
        """Replace the config (`config=...`) and/or change settings (`train__lr=1e-3`, or
        dotted keys)."""
        if "config" in params:
            self.config = self._resolve_config(params.pop("config"), None)
        if params:
            over = {k.replace("__", "."): v for k, v in params.items()}
            self.config = self.config.updated(over, source=f"{type(self).__name__}.set_params")
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, fitted={self.is_fitted})"

    # ------------------------------------------------------------------ fitted state
    @property
    def is_fitted(self) -> bool:
        return getattr(self, self.fitted_attribute, None) is not None

    def check_is_fitted(self) -> Any:
        """The fitted object (e.g. the network); NotFittedError before `fit`/`load`."""
        value = getattr(self, self.fitted_attribute, None)
        if value is None:
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted yet; call fit(...) first, or "
                                 f"{name}.load(run_dir) for a saved run.")
        return value

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> Path:
        """Write the fitted estimator to `run_dir` (created if needed); returns the path. Under
        data-parallel training only rank 0 writes."""
        self.check_is_fitted()
        d = Path(run_dir)
        if not distributed.is_main():
            return d
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArtifactError(f"{d}: cannot create the run directory ({e.strerror}); choose "
                                "another path.") from None
        # an earlier run's marker and manifest go first: until the new ones are written, the
        # directory is an unfinished run, never a mix of two runs that loads
        (d / COMPLETE_FILE).unlink(missing_ok=True)
        (d / MANIFEST).unlink(missing_ok=True)
        before = _stats(d)
        write_text(self.config.to_yaml(), d / CONFIG_FILE)
        self._save_state(d)
        after = _stats(d)
        written = sorted(n for n, st in after.items() if before.get(n) != st)
        cls = f"{type(self).__module__}.{type(self).__qualname__}"
        write_json({"task": self.task, "format_version": FORMAT_VERSION,
                    "userseq_version": __version__, "estimator": cls,
                    "files": {n: file_digest(d / n) for n in written}}, d / MANIFEST)
        write_text(f"{__version__}\n", d / COMPLETE_FILE)  # last: the run is complete
        return d

    @classmethod
    def load(cls: type[E], run_dir: str | Path) -> E:
        """Read a run directory written by `save` (or by userseq 0.1). On the base class, the
        estimator class is chosen by the run's task."""
        d = Path(run_dir)
        if not d.is_dir():
            raise ArtifactError(f"{d}: run directory not found.")
        manifest = read_manifest(d)
        check_run_files(d, manifest)
        task = manifest["task"]
        target = cls
        if cls.task != task:
            if cls.task:
                raise ArtifactError(f"{d}: this is a '{task}' run, not a '{cls.task}' run; "
                                    f"load it with the {task} estimator (or userseq.load).")
            target = estimator_class(task)
        cfg = target._read_config(d)
        est = target(config=cfg)
        est._load_state(d)
        return est  # type: ignore[return-value]

    @classmethod
    def _read_config(cls, d: Path) -> TaskConfig:
        for name in (CONFIG_FILE, *cls.legacy_config_files):
            if (d / name).is_file():
                try:
                    return cls.config_class.from_yaml(d / name)
                except ConfigError as e:
                    raise ArtifactError(f"{d}: bad {name}: {e}") from None
        raise ArtifactError(f"{d}: {CONFIG_FILE} is missing; the run directory is incomplete.")

    def _save_state(self, d: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _load_state(self, d: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def write_metrics(self, run_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write `run_dir/metrics.json` (the task and format version first); returns what was
        written."""
        out = {"task": self.task, "format_version": FORMAT_VERSION, **metrics}
        if not distributed.is_main():  # data-parallel training: rank 0 writes
            return out
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json(out, Path(run_dir) / METRICS_FILE)
        return out


def estimator_class(task: str) -> type[Estimator[Any]]:
    """The estimator class of a task. A task is a userseq package (`userseq.<task>`): it is imported
    on first use so that `Estimator.load` works without importing every task up front."""
    if task not in ESTIMATORS:
        try:
            importlib.import_module(f"userseq.{task}.estimator")
        except ModuleNotFoundError:
            pass
    return ESTIMATORS.get(task).obj


def read_manifest(d: Path) -> dict[str, Any]:
    """`estimator.json` of a run; for runs written before it existed (format 1) the task is read off
    the files. Newer formats and unknown runs are ArtifactErrors that say what to do."""
    if (d / MANIFEST).is_file():
        m = read_json(d / MANIFEST)
        if not isinstance(m, dict) or "task" not in m:
            raise ArtifactError(f"{d / MANIFEST}: not a userseq run manifest (no 'task').")
        version = m.get("format_version", 1)
        written_by = m.get("userseq_version", "?")
        if (not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION
                or _newer(written_by, __version__)):
            raise ArtifactError(
                f"{d}: written by userseq {written_by} in run format "
                f"{version}; this userseq ({__version__}) reads formats up to {FORMAT_VERSION}. "
                "Upgrade userseq to load it.")
        if version >= 3 and not (d / COMPLETE_FILE).is_file():
            raise ArtifactError(f"{d}: unfinished run (no {COMPLETE_FILE} marker: training or "
                                "saving was interrupted); continue it with `userseq train ... "
                                "--resume`, or train again with --overwrite.")
        return m
    task = legacy_task(d)
    if task is None:
        if (d / "checkpoint.safetensors").exists():
            raise ArtifactError(f"{d}: training has not finished (a checkpoint but no saved "
                                "model); wait for it, "
                                "or continue it with `userseq train ... --resume`.")
        raise ArtifactError(f"{d}: not a userseq run directory (no {MANIFEST}, {CONFIG_FILE} "
                            "or model); "
                            "create one with `userseq train` (or `userseq ctr|detect train`).")
    return {"task": task, "format_version": 1}


def check_run_files(d: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest records (format 3) must be there with its recorded size and
    SHA-256: a run file that is missing, cut, edited or taken from another run is an error."""
    files = manifest.get("files")
    if manifest.get("format_version", 1) < 3:
        return
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{d / MANIFEST}: no file list; the manifest is damaged. Train the "
                            "run again.")
    for name, want in files.items():
        p = d / name
        if not p.is_file():
            raise ArtifactError(f"{p}: missing; the run directory is incomplete (restore the file "
                                "or train again).")
        size = p.stat().st_size
        if size != want.get("bytes"):
            raise ArtifactError(f"{p}: {size} bytes, but the run recorded {want.get('bytes')}: the "
                                "file was cut, changed or replaced after training; restore it or "
                                "train again.")
        if file_digest(p)["sha256"] != want.get("sha256"):
            raise ArtifactError(f"{p}: content differs from what the run recorded (SHA-256 "
                                "mismatch): the file was changed or taken from another run; "
                                "restore it or train again.")


def _stats(d: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime, size) of the regular files directly in `d` (not hidden temporaries)."""
    out = {}
    for e in os.scandir(d):
        if e.is_file(follow_symlinks=False) and not e.name.startswith("."):
            st = e.stat(follow_symlinks=False)
            out[e.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _newer(version: str, than: str) -> bool:
    """Whether release `version` ("0.3.1") is newer than `than` (unparsable: not newer)."""
    def parts(v: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(x) for x in v.split("+")[0].split(".")[:3])
        except ValueError:
            return None

    a, b = parts(str(version)), parts(str(than))
    return a is not None and b is not None and a > b


def legacy_task(d: Path) -> str | None:
    """The task of a format-1 run (userseq 0.1): detect.yaml marks a detector; otherwise the task is
    in the model's safetensors metadata."""
    if (d / "detect.yaml").is_file():
        return "detect"
    model = d / "model.safetensors"
    if (d / CONFIG_FILE).is_file() and model.is_file():
        try:
            with safe_open(str(model), framework="pt") as f:
                return (f.metadata() or {}).get("task") or "nextitem"
        except Exception:  # a corrupt file: the task's own loader reports it
            return "nextitem"
    return None


def load(run_dir: str | Path) -> Estimator[Any]:
    """Load any saved userseq run (the estimator class is chosen by its task)."""
    return Estimator.load(run_dir)
