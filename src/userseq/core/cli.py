"""Pieces every command module shares: the two consoles, common arguments, and how command-line
options are applied to a config (a bad value names the option, not the config key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

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
            out_[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML.") from None
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
