"""The HTTP routes, one module per task, each with `mount(app, service)`:

* `nextitem`  recommendations, embeddings, similar items/users, the catalogue and the item map
* `detect`    POST /classify (a detector run, `userseq serve --detector`)
* `ctr`       POST /score (a CTR run, `userseq serve --ctr` or `userseq ctr serve`)

`serve.app` assembles them with the shared middleware, error handlers, /health, /info and the
web page. This module holds what the route modules share.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

from userseq.serve.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "unreadable body (not UTF-8 JSON)"},
    404: {"model": ErrorResponse, "description": "unknown id, or the run is not loaded"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request"},
}


def json_response(content: Any) -> Response:
    """A pre-serialised JSON answer: the hot endpoints build plain dicts that already follow their
    response model, so FastAPI's second validation pass is skipped (the schema still documents
    them)."""
    try:
        import orjson

        return Response(orjson.dumps(content), media_type="application/json")
    except ImportError:
        return Response(json.dumps(content, separators=(",", ":")), media_type="application/json")
