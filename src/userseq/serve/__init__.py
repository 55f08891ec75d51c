"""HTTP service: FastAPI app (`create_app`), the serving logic (`Service`) and the web page.

Imports are lazy so that `userseq --help` (which registers `userseq.serve.cli`) stays fast.
"""

from typing import Any

__all__ = ["RequestError", "Service", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("RequestError", "Service"):
        from userseq.serve import service

        return getattr(service, name)
    if name == "create_app":
        from userseq.serve.app import create_app

        return create_app
    raise AttributeError(name)
