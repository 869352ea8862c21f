"""The FastAPI app of `imgclf serve` (the command, its options and startup: cli/_serve.py): the Service its routes
share, the routes, and what they may read.

The page is one static file (src/imgclf/web/index.html, no CDN: nothing is fetched from the internet); the API
classifies with the same `Classifier` as `imgclf predict` (the one serving contract), so a page and the CLI give
the same result for the same file.

What it may read and hold: every server-side path (an image, a folder's members, a list file's lines, a model to
switch to) is resolved, symlinks included, and must lie under an allowed root (a model also under the folder of
the model it started with); a path outside answers the same 403 whether it exists or not. Requests that change
or read server state accept only the page's own origin, and a model switch only a JSON body. Uploads are counted
as they arrive (chunked or not) against the limit and written to disk one file at a time (deploy/uploads.py), and
at most `max_concurrent` requests decode and classify at once, each image refused past the pixel limit from its
header: memory and open files are bounded by these settings. A model switched to is read once, each of its files
checked on the file opened (deploy/model_files.py), and each run of a model is stopped past `inference_timeout`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from contextlib import closing
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from imgclf.deploy.access import Guard, UploadTooLarge, inside, json_body, open_inside
from imgclf.deploy.inputs import iter_inputs
from imgclf.deploy.model_card import RUN_ID, Model, load_model
from imgclf.deploy.pictures import png_url, thumbnail
from imgclf.deploy.predict import Prediction, top_k
from imgclf.deploy.runtimes import RUN_SECONDS
from imgclf.deploy.uploads import Limits, read_form
from imgclf.errors import USER_ERRORS, BadInput, shown

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
MAX_FILES = 500
MAX_JSON_BYTES = 64 << 10
FORM = Limits(files=MAX_FILES, fields=8, field_bytes=8192)  # a Classify form: its files, a path and a few more


def displayed(name: str) -> str:
    """A file name as the page shows it: bytes that are not UTF-8 (`bad\\xff.png`, held as surrogates) as `\\xff`,
    which JSON can carry, not a 500 for the whole request."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def results(preds: list[Prediction], names: list[str], titles: list[str], thumb: int, opener=None) -> list[dict]:
    rows = []
    for pred, name in zip(preds, titles):
        row: dict[str, Any] = {"name": name, "error": pred.error}
        if pred.probs is not None:
            row["top"] = [{"label": c, "prob": p} for c, p in top_k(pred, names, 5)]
            row["thumbnail"] = thumbnail(Path(pred.path), thumb, opener)
        rows.append(row)
    return rows


def _answer_errors(app: FastAPI, answer, max_bytes: int) -> None:
    """A user's mistake is one JSON line and one log line with its 4xx status; anything else is a 500 whose
    traceback uvicorn logs."""

    @app.exception_handler(UploadTooLarge)
    async def too_large(request: Request, exc: UploadTooLarge):
        return answer(request, 413, f"upload over the limit of {max_bytes / 1e6:g} MB")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return answer(request, exc.status_code, str(exc.detail))

    for kind in USER_ERRORS:

        @app.exception_handler(kind)
        async def client_error(request: Request, exc: Exception):
            status = next((s for k, s in CLIENT_ERRORS.items() if isinstance(exc, k)), 400)
            return answer(request, status, str(exc) or type(exc).__name__)  # one line: answer escapes it

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect):  # nobody to answer: one line, no traceback
        if not getattr(request.state, "body_timed_out", False):  # else deploy/connections.py said why: 408
            log.warning("%s %s: the client went away mid-request", request.method, shown(request.url.path))
        return JSONResponse({"error": "client disconnected"}, 400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # a bug: uvicorn logs its traceback
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"}, 500)


class Service:
    """What the routes share: the served model (swappable from the picker) and the limits."""

    def __init__(
        self,
        model: Model,
        *,
        cache: Path,
        uri: str,
        experiment: str,
        roots: list[Path],
        max_upload_mb: float,
        max_concurrent: int = 2,
        max_request_pixels: int | None = None,
        model_roots: list[Path] = (),
        inference_timeout: float | None = RUN_SECONDS,
        review: Any = None,
        explainer: Any = None,
        cam_note: str | None = None,
    ):
        self.model, self.uri, self.experiment, self.review = model, uri, experiment, review  # review: deploy.review
        # Grad-CAM for Classify One (deploy.explain.Explainer): from the checkpoint beside the model served first,
        # so only while a model of that network is served (checked at each switch)
        self.explainer, self.explained = explainer, model.ref
        self.cam_note = cam_note  # why Classify One shows no Grad-CAM (another network's checkpoint), said beside it
        self.roots, self.max_bytes = [r.resolve() for r in roots], int(max_upload_mb * 1e6)
        self.model_roots = self.roots + [r.resolve() for r in model_roots]
        self.max_request_pixels = max_request_pixels
        self.cache = cache  # downloaded models, run pictures and uploads: the caller's, removed by the caller
        self.lock = threading.Lock()
        self.switching, self.explaining = threading.Lock(), threading.Lock()
        self.max_concurrent = max_concurrent  # requests decoding and classifying at once: the memory bound
        self.inference_timeout = inference_timeout  # seconds a run of a model switched to may take

    def classify(self, uploads: list[tuple[str, Path]], path: str) -> dict[str, Any]:
        """Uploaded files ((the name sent, where it was written) pairs), or a file, folder or list file under the
        allowed roots: one row per image."""
        if not uploads and not path:
            raise BadInput("choose an image (or several), or type a path")
        opener = None
        if path:
            inputs, titles, refused = self._server_inputs(path)
            opener = partial(open_inside, roots=self.roots)  # checked again on each file as it is opened
        else:  # at most MAX_FILES: the form refused more before writing them
            inputs, titles, refused = [p for _, p in uploads], [Path(name).name for name, _ in uploads], {}
        if not inputs:
            raise BadInput(f"no images in {shown(path)}")
        model = self.model
        started = time.perf_counter()
        allowed = [p for i, p in enumerate(inputs) if i not in refused]
        preds = iter(model.classifier.classify(allowed, opener=opener, max_pixels=self.max_request_pixels))
        merged = [Prediction(str(p), error=refused[i]) if i in refused else next(preds) for i, p in
                  enumerate(inputs)]  # fmt: skip
        latency = (time.perf_counter() - started) * 1000
        rows = results(merged, model.classifier.class_names, titles, 256 if len(inputs) == 1 else 64, opener)
        if len(rows) == 1 and merged[0].probs is not None and self.explainer and model.ref == self.explained:
            with self.explaining:  # its hooks hold one call's activations on the one network
                cam = self.explainer.overlay(inputs[0], int(merged[0].probs.argmax()), opener)
            rows[0]["cam"] = png_url(cam)
        elif len(rows) == 1 and merged[0].probs is not None and self.cam_note and model.ref == self.explained:
            rows[0]["cam_note"] = self.cam_note
        return {"latency_ms": round(latency, 1), "model": model.ref, "results": rows}

    def _server_inputs(self, path: str) -> tuple[list[Path], list[str], dict[int, str]]:
        """The images a typed path names, each resolved and checked against the roots: a folder's members and a
        list file's lines too. Those outside get the same error row whether they exist or not."""
        inputs, titles, refused = [], [], {}
        top = inside(path, self.roots)
        base = top.parent if top.suffix.lower() == ".txt" and top.is_file() else None  # a list's relative lines

        def line_kind(line: Path) -> str:  # a line outside the roots names nothing, whether it exists or not
            try:
                return "file" if inside(line, self.roots, base=base).is_file() else "other"
            except (PermissionError, FileNotFoundError):
                return "other"

        # listed only as far as the cap: a folder of a million files or a list of a million lines costs 501 names
        with closing(iter_inputs([str(top)], line_kind, partial(open_inside, roots=self.roots))) as found:
            taken = list(islice(found, MAX_FILES + 1))
        if len(taken) > MAX_FILES:
            raise BadInput(f"{shown(path)} names more than {MAX_FILES} images; give at most {MAX_FILES} at a time")
        for i, listed in enumerate(sorted(taken) if top.is_dir() else taken):  # a folder's in name order
            titles.append(displayed(str(listed)))
            try:
                inputs.append(inside(listed, self.roots, base=base))
            except PermissionError:
                inputs.append(Path(listed))
                refused[i] = "outside the allowed roots"
            except FileNotFoundError:
                inputs.append(Path(listed))
                refused[i] = "no such file"
        return inputs, titles, refused

    def switch(self, ref: str) -> dict[str, Any]:
        """Load `ref` and serve it. One switch at a time: two loads of one run or registered model would write its
        files into the same cache folder at once."""
        with self.switching:
            model = load_model(ref, self.uri, self.cache, roots=self.model_roots, timeout=self.inference_timeout)
            explained = self.explainer is not None and self.explainer.explains(model.classifier)
        with self.lock:
            self.model = model
            if self.explainer is not None:  # Grad-CAM only where the explainer's network is the one served
                self.explained = model.ref if explained else None
        return model.card


# a model's run stopped past --inference-timeout: the server's model, not the request, was at fault
CLIENT_ERRORS = {PermissionError: 403, FileNotFoundError: 404, TimeoutError: 503}


async def _model_ref(request: Request, answer) -> str | JSONResponse:
    """The `model` of a switch's small JSON body, or the answer refusing it."""
    sent = await json_body(request, answer, '{"model": "..."}', "a model switch", MAX_JSON_BYTES)
    if isinstance(sent, JSONResponse):
        return sent
    ref = sent.get("model")
    if not isinstance(ref, str) or not ref.strip():
        return answer(request, 400, 'the body must be a JSON object {"model": "<path, run id or models:/n/v>"}')
    return ref.strip()


async def _switch(request: Request, service: Service, answer, slots) -> Any:
    """POST /api/model: the model named in the body served from now on (the page's picker)."""
    ref = await _model_ref(request, answer)
    if isinstance(ref, JSONResponse):
        return ref
    async with slots:  # a load holds a model's weights: counted with the requests decoding and classifying
        return await run_in_threadpool(service.switch, ref)


async def _classify(request: Request, service: Service, slots) -> Any:
    """POST /api/classify: the form written into a folder of its own as it arrives (removed after the answer), then
    classified in one of the slots. The form is read before the slot is taken, so a slow sender holds its socket
    and one open file, not a slot the others wait for."""
    with tempfile.TemporaryDirectory(dir=service.cache, prefix="upload-") as folder:
        form = await read_form(request, Path(folder), FORM)
        async with slots:
            return await run_in_threadpool(service.classify, form.files, form.fields.get("path", "").strip())


def _runs_routes(app: FastAPI, service: Service) -> None:
    """The Runs view: the experiment's latest runs, and a run's curves as they stand (growing while it trains)."""
    from imgclf import tracking

    @app.get("/api/runs")
    def runs():
        return {"experiment": service.experiment, "runs": tracking.recent_runs(service.uri, service.experiment)}

    @app.get("/api/runs/{run_id}")
    def curves(run_id: str):
        if not RUN_ID.fullmatch(run_id):
            raise BadInput(f"{run_id[:40]!r} is not an MLflow run id (32 hex digits)")
        return tracking.run_curves(service.uri, run_id)


def create_app(service: Service, allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The routes. `allowed_hosts`: the Host names a request may carry (a server on loopback answers only to
    loopback names, so a web page cannot reach it by rebinding its own name to 127.0.0.1); None takes any."""
    import anyio

    app = FastAPI(title="imgclf", docs_url=None, redoc_url=None, openapi_url=None)
    # a waiting request holds its socket and its upload on disk (uploads.read_form: one open file while it arrives)
    slots = anyio.Semaphore(service.max_concurrent)

    def answer(request: Request, status: int, message: str) -> JSONResponse:
        message = shown(message, limit=None)  # whatever user text it holds: one line, no control characters
        log.warning("%s %s -> %d: %s", request.method, shown(request.url.path), status, message)  # one line per 4xx
        return JSONResponse({"error": message}, status)

    _answer_errors(app, answer, service.max_bytes)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return (WEB / "index.html").read_text()

    @app.get("/api/model")
    def model():
        return service.model.card

    @app.get("/api/models")
    def models():
        from imgclf import tracking

        return {"current": service.model.ref, **tracking.served_models(service.uri, service.experiment)}

    @app.post("/api/model")
    async def switch(request: Request):
        return await _switch(request, service, answer, slots)

    _runs_routes(app, service)
    if service.review is not None:
        from imgclf.deploy.review import review_routes

        review_routes(app, service.review, answer, thumbnail, slots)

    @app.get("/api/picture/{name}")
    def picture(name: str):
        found = service.model.pictures.get(name)
        if found is None:
            raise FileNotFoundError(f"the model's run has no {name} picture")
        return FileResponse(found, media_type="image/png")

    @app.post("/api/classify")
    async def classify(request: Request):
        return await _classify(request, service, slots)

    return Guard(app, max_bytes=service.max_bytes, allowed_hosts=allowed_hosts, answer=answer)
