"""Pieces every command module shares: the two consoles, common arguments, and how command-line
options are applied to a config (a bad value names the option, not the config key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from userseq.core.config import NULL
from userseq.core.errors import ConfigError

out = Console()
err = Console(stderr=True)

DataArg = Annotated[str, typer.Option("--data", "-d",
                                      help="dataset name (userseq datasets list) or events file")]
RunDirArg = Annotated[Path, typer.Argument(help="run directory created by `userseq train`")]


def with_options(cfg: Any, options: dict[str, tuple[str, Any]]) -> Any:
    """Apply command-line options to a config; a bad value names the option, not the config key."""
    try:
        return cfg.updated({key: value for key, value in options.values()}, source="command line")
    except ConfigError as e:
        msg = str(e).replace("command line: invalid config: ", "")
        for flag, (key, value) in options.items():
            if value is not None:
                msg = msg.replace(f"'{key}':", f"{flag} {value}:")
        raise ConfigError(f"invalid command-line option: {msg}") from None


OverwriteOpt = Annotated[bool, typer.Option(
    help="replace the run already in --out (its files are deleted first)")]

RUN_MARKERS = ("estimator.json", "config.yaml", "model.safetensors", "checkpoint.safetensors",
               "detect.yaml", "COMPLETE")


def writable_dir(d: Path) -> bool:
    """Whether a file can be created in directory `d` (tried, not guessed from permission bits:
    read-only file systems, /proc and root's view of permissions are all caught)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=d, prefix=".userseq-probe-"):
            return True
    except OSError:
        return False


def check_out_dir(out_dir: Path, resume: bool = False, overwrite: bool = False,
                  flag: str = "--out", delete: bool = False) -> None:
    """Check a run directory before any work: a file, a path under a file, an unwritable place
    and a non-empty directory (without --resume / --overwrite) are errors naming the fix. With
    --overwrite, only a previous userseq run may be there; `delete=True` deletes it (call that
    once the input has been read, so a bad input deletes nothing)."""
    import shutil

    from userseq.core.errors import ArtifactError

    if resume and overwrite:
        raise ConfigError("give --resume (continue the run in --out) or --overwrite (replace it), "
                          "not both.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{flag} {out_dir}: exists and is not a directory; choose a run "
                            "directory.")
    parent = next((p for p in out_dir.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ArtifactError(f"{flag} {out_dir}: {parent} is a file, not a directory; choose a "
                            "run directory elsewhere.")
    probe = out_dir if out_dir.is_dir() else parent
    if not writable_dir(probe):
        raise ArtifactError(f"{flag} {out_dir}: {probe} is not writable; choose a writable run "
                            "directory.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()) or resume:
        return
    is_run = any((out_dir / m).exists() for m in RUN_MARKERS)
    if not overwrite:
        what = "holds a run" if is_run else "is not empty"
        raise ArtifactError(f"{flag} {out_dir}: {what}; pass --resume to continue its checkpoint, "
                            "--overwrite to replace it, or choose a new directory.")
    if not is_run:
        raise ArtifactError(f"{flag} {out_dir}: not empty and not a userseq run, so --overwrite "
                            "will not delete it; choose a new or empty directory.")
    if delete:
        shutil.rmtree(out_dir)


SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="override any config setting: --set model.dim=128 (repeatable; values are YAML)")]


def parse_set(values: list[str] | None) -> dict[str, Any]:
    """`--set a.b=VALUE` options -> {"a.b": VALUE}; values are parsed as YAML scalars/lists
    (`--set eval.ks=[5,10]`, `--set train.max_minutes=null`)."""
    import yaml

    out_: dict[str, Any] = {}
    for item in values or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.dim=128.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML.") from None
        out_[key.strip()] = NULL if value is None else value  # null: set the field to null
    return out_


def config_show(
    run_dir: Annotated[Path | None, typer.Argument(help="a run directory (any task)")] = None,
    task: Annotated[str | None, typer.Option(help="print the default config of a task instead "
                                                  "(nextitem, ctr, detect, attack, "
                                                  "generative)")] = None,
) -> None:
    """Print a run's resolved config (every setting, defaults included) as YAML."""
    from userseq.core.estimator import estimator_class, read_manifest

    if (run_dir is None) == (task is None):
        raise ConfigError("give a run directory (userseq config show RUN) or --task NAME, "
                          "not both.")
    if task is not None:
        out.print(estimator_class(task).config_class().to_yaml(), end="", highlight=False)
        return
    from userseq.core.errors import ArtifactError

    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: run directory not found.")
    cls = estimator_class(read_manifest(run_dir)["task"])
    out.print(cls._read_config(run_dir).to_yaml(), end="", highlight=False)


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(no_args_is_help=True, help="Show configurations.")
    config_app.command("show")(config_show)
    app.add_typer(config_app, name="config")
