"""HTTP service: the FastAPI app (`create_app`, assembled in `app.py` from one routes module per
task in `routes/`), the request/response schemas (`schemas.py`), the next-item serving logic
(`Service`), the web page and the CLI (`userseq serve`, `userseq ctr serve`).

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
