"""The local web app (`kuosan serve`): a page and a JSON jobs API over one Pipeline.

- :mod:`.app`: the routes (Starlette) and :func:`serve` (uvicorn);
- :mod:`.jobs`: the bounded queue and the one worker thread that owns the Pipeline;
- :mod:`.guard`: Host, token, origin, content type and body checks;
- :mod:`.parse`: a job's JSON → a checked Request.

The API and its safety rules: docs/web.md.
"""

from .app import check_listen, create_app, serve
from .guard import Policy

__all__ = ["Policy", "check_listen", "create_app", "serve"]
