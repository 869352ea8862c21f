"""`imgclf serve`: DIGITS' pages in a browser. Classify One, Classify Many and the model card, on FastAPI.

The page is one static file (src/imgclf/web/index.html, no CDN: nothing is fetched from the internet); the API
classifies with the same `Classifier` as `imgclf predict` (the one serving contract), so a page and the CLI give
the same result for the same file. Uploads have a size limit; a file that cannot be read is a message on the page,
never a server error; server-side paths are read only under the allowed roots.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from .errors import BadInput, MissingInput
from .predict import Classifier, Prediction, collect_inputs, top_k

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
ARTIFACTS = {  # the model card's pictures: name -> the run's artifact
    "curves": "train/curves.png",
    "confusion": "evaluate/confusion_matrix.png",
    "class_counts": "data/class_counts.png",
    "samples": "data/samples.png",
}
MAX_FILES = 500


@dataclass
class Model:
    """The model being served: its classifier, and what the card says about it."""

    ref: str
    classifier: Classifier
    run_id: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)


def load_model(ref: str, uri: str, cache: Path) -> Model:
    """An export or optimised dir, a model file (.onnx, .pt2, .xml, .plan, .pt), a run id (its export) or
    `models:/name/version`."""
    from . import tracking

    path = Path(ref).expanduser()
    run_id = None
    if path.exists():
        run_file = (path if path.is_dir() else path.parent).parent / "run.json"
        if run_file.is_file():
            import json

            run_id = json.loads(run_file.read_text()).get("run_id")
    elif ref.startswith("models:/"):
        local, run_id = tracking.download_model(uri, ref, cache / "registered")
        found = sorted(local.rglob("model.onnx"))
        if not found:
            raise MissingInput(f"{ref} holds no model.onnx; register a model from `imgclf export`")
        path = found[0].parent
    else:
        run_id = ref
        export = tracking.run_record(uri, ref)["tags"].get("imgclf.export_dir")
        path = Path(export) if export and Path(export).is_dir() else None
        if path is None:
            path = tracking.artifact_file(uri, ref, "export", cache / ref)
        if path is None:
            raise MissingInput(f"run {ref} has no export; run `imgclf export` (dvc repro) for it first")
    model = Model(ref, Classifier(path), run_id)
    model.card = model_card(model, uri, cache)
    return model


def model_card(model: Model, uri: str, cache: Path) -> dict[str, Any]:
    """Run id and link, data set, classes, test metrics; the run's pictures downloaded into `cache`."""
    from . import tracking

    card: dict[str, Any] = {"model": model.ref, "classes": model.classifier.class_names, "run_id": model.run_id}
    spec = model.classifier.spec
    card["input"] = f"{spec.image_size} px ({spec.resize}, {spec.interpolation})"
    if model.run_id is None:
        return card
    try:
        record = tracking.run_record(uri, model.run_id)
        card["link"] = tracking.run_link(uri, model.run_id)
    except (BadInput, MissingInput) as exc:
        card["tracking"] = f"the run is not in {uri}: {exc}"
        return card
    card["run_name"] = record["name"]
    card["dataset"] = record["tags"].get("imgclf.dataset", "")
    card["metrics"] = {k: record["metrics"][k] for k in ("test/acc", "test/macro_f1") if k in record["metrics"]}
    for name, artifact in ARTIFACTS.items():
        local = tracking.artifact_file(uri, model.run_id, artifact, cache / model.run_id)
        if local is not None:
            model.pictures[name] = local
    card["pictures"] = sorted(model.pictures)
    return card


def thumbnail(path: Path, size: int) -> str | None:
    """A small JPEG of the image as a data URL (None when it cannot be read)."""
    try:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def results(preds: list[Prediction], names: list[str], shown: list[str], thumb: int) -> list[dict[str, Any]]:
    rows = []
    for pred, name in zip(preds, shown):
        row: dict[str, Any] = {"name": name, "error": pred.error}
        if pred.probs is not None:
            row["top"] = [{"label": c, "prob": p} for c, p in top_k(pred, names, 5)]
            row["thumbnail"] = thumbnail(Path(pred.path), thumb)
        rows.append(row)
    return rows


def inside(path: str, roots: list[Path]) -> Path:
    """A server-side path, resolved, if it lies under one of `roots`."""
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == r or r in resolved.parents for r in roots):
        allowed = ", ".join(map(str, roots)) or "none (serve --allow-root DIR)"
        raise PermissionError(f"{path} is outside the allowed roots: {allowed}")
    if not resolved.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return resolved


class Service:
    """What the routes share: the served model (swappable from the picker) and the limits."""

    def __init__(self, model: Model, *, uri: str, experiment: str, roots: list[Path], max_upload_mb: float):
        self.model, self.uri, self.experiment = model, uri, experiment
        self.roots, self.max_bytes = [r.resolve() for r in roots], int(max_upload_mb * 1e6)
        self.cache = Path(tempfile.mkdtemp(prefix="imgclf-serve-"))
        self.lock = threading.Lock()

    def classify(self, files: list[tuple[str, bytes]], path: str) -> dict[str, Any]:
        """Uploaded (name, bytes) pairs, or a file or folder under the allowed roots: one row per image."""
        if not files and not path:
            raise BadInput("choose an image (or several), or type a path")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            if path:
                inputs = collect_inputs([str(inside(path, self.roots))])
                shown = [str(p) for p in inputs]
            else:
                inputs, shown = [], []
                for i, (name, data) in enumerate(files):
                    inputs.append(Path(tmp) / f"{i}{Path(name).suffix.lower()[:8]}")
                    inputs[-1].write_bytes(data)
                    shown.append(Path(name).name)
            if not inputs:
                raise BadInput(f"no images in {path}")
            if len(inputs) > MAX_FILES:
                raise BadInput(f"{len(inputs)} images: at most {MAX_FILES} at a time")
            model = self.model
            started = time.perf_counter()
            preds = model.classifier.classify(inputs)
            latency = (time.perf_counter() - started) * 1000
            rows = results(preds, model.classifier.class_names, shown, 256 if len(inputs) == 1 else 64)
        return {"latency_ms": round(latency, 1), "model": model.ref, "results": rows}

    def switch(self, ref: str) -> dict[str, Any]:
        model = load_model(ref, self.uri, self.cache)
        with self.lock:
            self.model = model
        return model.card


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="imgclf", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def limit_uploads(request: Request, call_next):
        size = int(request.headers.get("content-length") or 0)
        if size > service.max_bytes:
            async for _ in request.stream():  # read and dropped, never kept: the client then gets the answer
                pass
            limit = service.max_bytes / 1e6
            return JSONResponse({"error": f"upload of {size / 1e6:.1f} MB is over the limit of {limit:g} MB"}, 413)
        return await call_next(request)

    @app.exception_handler(Exception)
    async def one_message(request: Request, exc: Exception):
        status = {PermissionError: 403, FileNotFoundError: 404}.get(type(exc), 400)
        if not isinstance(exc, (BadInput, MissingInput, PermissionError, FileNotFoundError)):
            log.exception("serve: %s", request.url.path)
            status = 500
        return JSONResponse({"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, status)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return (WEB / "index.html").read_text()

    @app.get("/api/model")
    def model():
        return service.model.card

    @app.get("/api/models")
    def models():
        from . import tracking

        return {"current": service.model.ref, **tracking.served_models(service.uri, service.experiment)}

    @app.post("/api/model")
    async def switch(request: Request):
        return service.switch(str((await request.json()).get("model", "")))

    @app.get("/api/picture/{name}")
    def picture(name: str):
        found = service.model.pictures.get(name)
        if found is None:
            raise FileNotFoundError(f"the model's run has no {name} picture")
        return FileResponse(found, media_type="image/png")

    @app.post("/api/classify")
    async def classify(request: Request):
        form = await request.form()
        files = [(f.filename or "upload", await f.read()) for f in form.getlist("files") if hasattr(f, "read")]
        return await run_in_threadpool(service.classify, files, str(form.get("path") or "").strip())

    return app


def main(argv: list[str]) -> int:
    import argparse
    import os
    import sys

    import uvicorn

    parser = argparse.ArgumentParser(prog="imgclf serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="models/export", help="export dir, model.onnx/.pt2/.xml/.plan/.pt, RUN_ID or models:/n/v"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="imgclf", help="where the model picker looks for runs")
    parser.add_argument("--allow-root", action="append", type=Path, default=[], help="paths the page may read")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        service = Service(
            load_model(args.model, args.uri, Path(tempfile.mkdtemp(prefix="imgclf-serve-"))),
            uri=args.uri,
            experiment=args.experiment,
            roots=args.allow_root,
            max_upload_mb=args.max_upload_mb,
        )
    except (BadInput, MissingInput, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"imgclf serve: {service.model.ref} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    return 0
