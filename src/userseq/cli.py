"""The `userseq` command line: assembles the sub-commands of each package, nothing else.

User errors (`UserseqError`) print one `error:` line and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import typer
from rich.markup import escape

from userseq.core.cli import err
from userseq.core.errors import UserseqError, UserseqWarning

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="User and item embeddings from behaviour sequences.")

# Each module defines `register(app)`; the order is the order of `userseq --help`.
COMMAND_MODULES = ("userseq.core.cli", "userseq.data.cli", "userseq.nextitem.cli",
                   "userseq.generative.cli", "userseq.ctr.cli",
                   "userseq.index.cli", "userseq.serve.cli",
                   "userseq.detect.cli", "userseq.attack.cli", "userseq.export.cli",
                   "userseq.context.cli")

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """userseq's own warnings as one `warning:` line (others keep Python's format)."""
    if issubclass(category, UserseqWarning):
        err.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False,
                  soft_wrap=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app()
    except UserseqError as e:
        # soft_wrap: no line breaks inserted into the message (logs, CI);
        # escape: ids may contain [brackets]
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    main()
