"""The routes (Starlette): the page, the jobs API, the outputs folder; and :func:`serve`, which
runs them on uvicorn with the settings that keep a busy or hostile client from starving others.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..defaults import STRENGTH
from ..errors import KuosanError
from ..pipeline import Pipeline
from ..samplers import SAMPLERS
from ..scenes import SCENE_SIZES, draws_scenes
from .guard import BODY_SECONDS, MAX_BODY, Guard, Policy, Refused, is_loopback, read_json
from .jobs import FINISHED, Job, Jobs, QueueFull
from .parse import FEATHER_MAX, GUIDANCE_MAX, SEED_MAX, UPLOAD_PIXELS, parse_job

RETRY_AFTER = 5  # seconds a client told "queue full" waits: about one small job
EVENT_SECONDS = 0.2  # how often an event stream looks at its job
HISTORY_MAX = 500
_OUTPUT_NAME = re.compile(r"[0-9a-z-]{1,64}\.png")


def create_app(pipe: Pipeline, model: str, outputs: Path, policy: Policy,
               queue_size: int = 8, body_seconds: float = BODY_SECONDS,
               max_body: int = MAX_BODY) -> Starlette:
    """The ASGI app over ``pipe`` (its ``limits`` are the server's); ``app.state.jobs`` holds
    the queue (close it on shutdown)."""
    jobs = Jobs(pipe, outputs, queue_size)

    async def page(request: Request) -> Response:
        html = resources.files("kuosan").joinpath("static/index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8")

    async def info(request: Request) -> Response:
        c, h, w = pipe.info.shape
        return JSONResponse({
            "model": model, "version": __version__, "size": [w, h], "channels": c,
            "text": pipe.is_text_conditioned, "image": pipe.info.kind == "image",
            "attribution": pipe.attribution, "styles": list(pipe.styles),
            # an emoji model draws scenes ("scene": SIZE, kuosan.scenes): the sizes it takes
            "scene_sizes": list(SCENE_SIZES) if draws_scenes(pipe) else [],
            "defaults": {"task": "generate", "num": 1, "steps": 20, "seed": None,
                         "sampler": pipe.default_sampler, "guidance": pipe.default_guidance,
                         "strength": dict(STRENGTH), "resample": {"outpaint": 1},
                         "feather": 0.0},
            "samplers": list(SAMPLERS), "tasks": ["generate", "inpaint", "outpaint", "vary",
                                                  "img2img"],
            "limits": {**pipe.limits.as_dict(), "seed": [0, SEED_MAX],
                       "guidance": [0, GUIDANCE_MAX], "feather": [0, FEATHER_MAX],
                       "strength": [0, 1], "body_bytes": max_body, "body_seconds": body_seconds,
                       "upload_pixels": UPLOAD_PIXELS, "queue": queue_size},
            "queue": {"waiting": jobs.waiting(), "size": queue_size}})

    async def submit(request: Request) -> Response:
        body = await read_json(request, max_body, body_seconds)
        try:
            spec = await asyncio.to_thread(parse_job, body, pipe)  # image decoding: off the loop
        except KuosanError as err:  # a check of the library's own (a sampler's, an edit's)
            raise Refused(422, str(err)) from None
        try:
            job = jobs.submit(spec)
        except QueueFull:
            raise Refused(429, f"the queue is full ({queue_size} jobs wait): try again soon",
                          {"Retry-After": str(RETRY_AFTER)}) from None
        return JSONResponse({"id": job.id}, 202, headers={"Location": f"/api/jobs/{job.id}"})

    def find(request: Request) -> Job:
        job = jobs.get(request.path_params["id"])
        if job is None:
            raise Refused(404, f"no job {request.path_params['id'][:40]!r}")
        return job

    async def status(request: Request) -> Response:
        return JSONResponse(find(request).as_dict())

    async def cancel(request: Request) -> Response:
        job = jobs.cancel(find(request).id)
        return JSONResponse(job.as_dict() if job else {})

    async def events(request: Request) -> Response:
        return EventStream(jobs, find(request))

    async def history(request: Request) -> Response:
        try:
            limit = min(HISTORY_MAX, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise Refused(422, "limit: must be an integer") from None
        return JSONResponse({"jobs": jobs.history(limit)})

    async def output(request: Request) -> Response:
        name = request.path_params["name"]
        path = outputs / name
        if not _OUTPUT_NAME.fullmatch(name) or not path.is_file():
            raise Refused(404, "no such image")
        return FileResponse(path, media_type="image/png")

    async def gone(request: Request) -> Response:
        raise Refused(410, f"{request.url.path} was removed: POST /api/jobs, then GET "
                           f"/api/jobs/ID (docs/web.md)")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": f"{request.method} {request.url.path[:80]}: {exc.detail}"},
                            exc.status_code, headers=exc.headers)

    routes = [
        Route("/", page), Route("/index.html", page),
        Route("/api/info", info),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{id}", status, methods=["GET"]),
        Route("/api/jobs/{id}", cancel, methods=["DELETE"]),
        Route("/api/jobs/{id}/events", events),
        Route("/api/history", history),
        Route("/outputs/{name}", output),
        Route("/api/generate", gone, methods=["GET", "POST"]),
        Route("/api/edit", gone, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Refused: refused, HTTPException: http_error})
    app.add_middleware(Guard, policy=policy)
    app.state.jobs = jobs
    return app


class EventStream:
    """Server-sent events of one job: ``progress`` ({state, progress, preview}) when it changes,
    then ``done`` (the job, as GET /api/jobs/ID). A client that leaves cancels its job."""

    def __init__(self, jobs: Jobs, job: Job) -> None:
        self.jobs, self.job = jobs, job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job, last = self.job, None
        left = asyncio.Event()

        async def watch() -> None:  # uvicorn's send() is silent once the client has left
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")]})
        try:
            while not left.is_set():
                now = (job.state, round(job.progress, 3), job.preview)
                if job.state in FINISHED:
                    await send(_event("done", job.as_dict(), more=False))
                    return
                # a change, or a comment line now and then
                await send(_event("progress", {"state": now[0], "progress": now[1],
                                               "preview": now[2]}) if now != last else _KEEP)
                last = now
                await asyncio.sleep(EVENT_SECONDS)
        except OSError:  # the client left
            pass
        finally:
            watcher.cancel()
            if job.state not in FINISHED:
                self.jobs.cancel(job.id)


_KEEP = {"type": "http.response.body", "body": b": waiting\n\n", "more_body": True}


def _event(name: str, data: dict[str, Any], more: bool = True) -> dict[str, Any]:
    body = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
    return {"type": "http.response.body", "body": body, "more_body": more}


def check_listen(host: str, port: int, token: str | None) -> socket.socket:
    """A socket bound to ``host``:``port`` (port 0: any free one), or a KuosanError naming the
    flag: a port out of range or taken, an address not loopback without ``--token``."""
    if not 0 <= port <= 65535:
        raise KuosanError(f"--port {port}: a port is 0 to 65535")
    if not is_loopback(host) and not token:
        raise KuosanError(f"--host {host}: any address but loopback needs --token (anyone who "
                          f"reaches it could run jobs)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as err:
        sock.close()
        reason = getattr(err, "strerror", None) or err
        raise KuosanError(f"cannot listen on {host}:{port} ({reason}); check --host and --port"
                          ) from None
    return sock


IDLE_SECONDS = 5.0  # a connection with no request under way is closed after at most this


def uvicorn_server(app: Starlette, sock: socket.socket, idle_seconds: float = IDLE_SECONDS
                   ) -> Any:
    """uvicorn on ``sock``: a listen backlog of 1024, at most 1024 connections at once (more:
    503), idle keep-alive connections closed after 5 s and half-sent requests after
    ``idle_seconds`` (:func:`closing_idle`), no access log."""
    import uvicorn

    config = uvicorn.Config(app, http=closing_idle(idle_seconds), backlog=1024,
                            timeout_keep_alive=5, limit_concurrency=1024, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def closing_idle(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection that has no request under way (headers
    never finished, or a response sent and nothing since) at each tick of ``seconds``: uvicorn
    itself times out idle keep-alive connections, not half-sent headers (slowloris)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._tick = self.loop.call_later(seconds, self._close_if_idle)

        def _close_if_idle(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            else:
                self._tick = self.loop.call_later(seconds, self._close_if_idle)

        def connection_lost(self, exc: Exception | None) -> None:
            self._tick.cancel()
            super().connection_lost(exc)

    return Protocol


def serve(pipe: Pipeline, model: str, sock: socket.socket, outputs: str | Path = "outputs",
          token: str | None = None) -> None:
    """Run the server on ``sock`` (:func:`check_listen`) until Ctrl-C (``kuosan serve``)."""
    host, port = sock.getsockname()[:2]
    app = create_app(pipe, model, Path(outputs), Policy(host, port, token))
    where = f"[{host}]" if ":" in host else host
    print(f"kuosan: serving '{model}' at http://{where}:{port}/ (outputs: {outputs}; "
          f"Ctrl-C stops)", flush=True)
    try:
        uvicorn_server(app, sock).run(sockets=[sock])
    finally:
        app.state.jobs.close()
        sock.close()
