"""The job queue: a bounded queue of checked requests and ONE worker thread that owns the
Pipeline and runs them in order, writing each finished image as a PNG (with its parameters,
:func:`kuosan.metadata.png_text`) into the outputs folder, atomically.

Progress is the model evaluations done over those expected (clamped, never going back);
cancelling a job stops it at its next model evaluation (the Request's callback raises
:class:`Cancelled`). The history is the outputs folder: read at start, added to as jobs finish.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import queue
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..errors import KuosanError
from ..images import to_pil
from ..metadata import png_text, read_parameters
from ..pipeline import Pipeline
from ..scenes import ScenePipeline
from ..schedule import x0_eps_from_output
from .parse import Spec

FINISHED = ("done", "failed", "cancelled")
PREVIEW_SECONDS = 0.25  # the most often a step preview is made
KEEP_JOBS = 256  # finished jobs kept in memory (the history on disk keeps all)
NAME_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz-")


class Cancelled(Exception):
    """Raised in the model callback of a job that was cancelled."""


class QueueFull(Exception):
    """The queue holds as many jobs as it may."""


@dataclass
class Job:
    """One job's state, written by the worker thread and read by the server."""

    id: str
    spec: Spec | None
    parameters: dict[str, Any]
    created: float = field(default_factory=time.time)
    state: str = "queued"
    progress: float = 0.0
    images: list[str] = field(default_factory=list)
    error: str | None = None
    preview: str | None = None  # a PNG data URL of x̂₀ of the first image, while running
    evaluations: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 4),
                "images": self.images, "parameters": self.parameters, "error": self.error,
                "created": self.created}


def new_id() -> str:
    """A job id that sorts by time (UTC, to the microsecond), then 4 random hex digits:
    20261204-213212-048213-9f3a."""
    now = time.time()
    return (time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now % 1 * 1e6):06d}-"
            + secrets.token_hex(2))


class Jobs:
    """The queue (at most ``size`` waiting jobs) and its worker over ``pipe``."""

    def __init__(self, pipe: Pipeline, outputs: Path, size: int = 8) -> None:
        self.pipe, self.outputs = pipe, Path(outputs)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.size = size
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=size)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._history = read_history(self.outputs)
        self._worker = threading.Thread(target=self._work, name="kuosan-worker", daemon=True)
        self._worker.start()

    # -- the server's side --

    def submit(self, spec: Spec) -> Job:
        """Queue a job (QueueFull when ``size`` jobs wait)."""
        job = Job(new_id(), spec, spec.parameters)
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull from None
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job or next((j for j in self._history if j.id == job_id), None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (it ends "cancelled" at its next model evaluation)."""
        job = self.get(job_id)
        if job is not None and job.state not in FINISHED:
            job.cancel.set()
            if job.state == "queued":
                job.state = "cancelled"
        return job

    def waiting(self) -> int:
        return self._queue.qsize()

    def history(self, limit: int) -> list[dict[str, Any]]:
        """Finished jobs with images, newest first."""
        with self._lock:
            return [j.as_dict() for j in itertools.islice(self._history, limit)]

    def close(self) -> None:
        """Cancel everything and stop the worker."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.cancel(job.id)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    # -- the worker's side --

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancel.is_set():
                job.state = "cancelled"
            else:
                self._run(job)
            job.spec = None  # the images it held
            self._forget()

    def _run(self, job: Job) -> None:
        job.state = "running"
        spec = job.spec
        assert spec is not None
        last_preview = [0.0]

        def callback(x_t: Any, t: Any, output: Any) -> None:
            if job.cancel.is_set():
                raise Cancelled
            job.evaluations += 1
            job.progress = max(job.progress, min(0.99, job.evaluations / spec.evaluations))
            if time.monotonic() - last_preview[0] > PREVIEW_SECONDS:
                last_preview[0] = time.monotonic()
                job.preview = self._preview(x_t, t, output)

        done = 0
        own = {k: spec.parameters[k] for k in ("user_prompt",) if k in spec.parameters}
        try:
            runner = ScenePipeline(self.pipe, spec.scene) if spec.scene else self.pipe
            for result in runner.batches(replace(spec.request, callback=callback)):
                for i in range(len(result)):
                    name = f"{job.id}-{done:02d}.png"
                    write_png(self.outputs / name, result[i], png_text(result, i, own))
                    job.images.append(f"/outputs/{name}")
                    done += 1
            job.state, job.progress = "done", 1.0
        except Cancelled:
            job.state = "cancelled"
        except KuosanError as err:
            job.state, job.error = "failed", str(err)
        except Exception as err:  # noqa: BLE001 (a bug of ours: the job says so, the server lives)
            job.state, job.error = "failed", f"internal error: {type(err).__name__}: {err}"
        finally:
            job.preview = None
        if job.images:
            with self._lock:
                self._history.insert(0, job)

    def _preview(self, x_t: Any, t: Any, output: Any) -> str | None:
        """x̂₀ of the first row as a PNG data URL (the same conversion as the Denoiser's)."""
        if self.pipe.info.kind != "image":
            return None
        alpha_bar = self.pipe.schedule.alpha_bar_at(t[:1].double().cpu()).float()
        x0, _ = x0_eps_from_output(output[:1].float().cpu(), x_t[:1].float().cpu(), alpha_bar,
                                   self.pipe.prediction)
        buf = io.BytesIO()
        to_pil(x0[0].clamp(-1, 1)).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def _forget(self) -> None:
        """Keep the newest :data:`KEEP_JOBS` finished jobs in memory."""
        with self._lock:
            finished = [k for k, j in self._jobs.items() if j.state in FINISHED]
            for key in finished[:-KEEP_JOBS]:
                del self._jobs[key]


def write_png(path: Path, image: Image.Image, text: dict[str, str]) -> None:
    """Save ``image`` with PNG text chunks to ``path`` atomically (a temporary file, then a
    rename: a reader never sees half a file)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_history(outputs: Path) -> list[Job]:
    """The finished jobs in ``outputs``, newest first: its files JOBID-NN.png grouped by job,
    parameters from the first image's kuosan chunk (files without one are skipped)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(outputs.glob("*-*.png")):
        job_id, _, index = path.stem.rpartition("-")
        if index.isdigit() and set(job_id) <= NAME_CHARS:
            groups.setdefault(job_id, []).append(path)
    jobs = []
    for job_id in sorted(groups, reverse=True):
        try:
            params = read_parameters(groups[job_id][0])
        except KuosanError:
            continue
        params["task"] = params.get("command", "generate")
        params["num"] = len(groups[job_id])
        job = Job(job_id, None, params, created=groups[job_id][0].stat().st_mtime, state="done",
                  progress=1.0, images=[f"/outputs/{p.name}" for p in groups[job_id]])
        jobs.append(job)
    return jobs
