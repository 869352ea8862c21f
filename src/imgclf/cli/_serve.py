"""`imgclf serve`: DIGITS' pages in a browser. Classify One, Classify Many, the model card and the runs' training
curves (read from MLflow as they are logged), on FastAPI.

The command: its options, the checks made before anything loads, the model and the Service it starts with, and a
SIGTERM that still removes the server's temporary folder. The app itself (its routes and what it may read) is
deploy/webapp.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from imgclf.credentials import take_uri_credentials
from imgclf.deploy.access import loopback_names
from imgclf.deploy.model_card import load_model, model_home
from imgclf.deploy.runtimes import RUN_SECONDS
from imgclf.deploy.webapp import Service, create_app
from imgclf.errors import USER_ERRORS
from imgclf.net import cannot_listen

log = logging.getLogger(__name__)
# stopped (SIGTERM, Ctrl-C), serve waits this long for the requests it is answering, then cancels them: a request
# stuck in a model's run would otherwise keep it from ending, whatever the signals sent
GRACE_SECONDS = 5.0


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf serve", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--model", default="models/export", help="export dir, model.onnx/.pt2/.xml/.plan/.pt, RUN_ID or models:/n/v"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="imgclf", help="where the model picker looks for runs")
    parser.add_argument(
        "--allow-root", action="append", type=_root, default=[], help="folders the page may read images from"
    )
    parser.add_argument("--review", metavar="DATASET", help="the Review view of data/DATASET's likeliest label issues; "
                        "fixes go to relabel/DATASET.csv (data/, relabel/ allowed roots)")  # fmt: skip
    parser.add_argument("--no-explain", action="store_true", help="no Grad-CAM in Classify One (it reads "
                        "models/model.pt beside the served model, when there)")  # fmt: skip
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit (default: %(default)s)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        help="requests decoding and classifying at once; the others wait (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-megapixels",
        type=float,
        default=4000.0,
        help="pixels all images of one request may have together, from their headers (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=64, help="open connections; past them 503 (default: %(default)s)"
    )
    parser.add_argument(
        "--inference-timeout",
        type=float,
        default=RUN_SECONDS,
        help="seconds one run of the model (a batch, or a load's check on two blank images) may take; past them the "
        "run is stopped: a model switched to is refused, a request answered 503 (onnxruntime and OpenVINO models) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a request's line and headers; then it is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--min-body-rate",
        type=float,
        default=10.0,
        metavar="KB_PER_S",
        help="KB a second a request's body must average once its first --header-timeout seconds have passed; slower, "
        "it is answered 408 and closed. A rate, not a deadline: a trickle is closed in seconds, while an upload of "
        "any size passes on any link faster (the default lets 20 MB take 2,000 s: 80 kbit/s) (default: %(default)s)",
    )
    return parser


class _Stopped(BaseException):  # not an Exception: a library's `except Exception` (MLflow's retries) would swallow it
    """SIGTERM, raised again by uvicorn once it has shut down (under the handler it found: `_stop`)."""


def _stop(signum, frame):
    raise _Stopped


def _not_cancelled(record: logging.LogRecord) -> bool:
    """A request cancelled past GRACE_SECONDS is said in uvicorn's one line (`Cancel 1 running task(s), timeout
    graceful shutdown exceeded`), not again as the cancellation's traceback."""
    import asyncio

    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _root(text: str) -> Path:
    """An --allow-root: a folder there now (an empty name would be the working folder, a file or a missing folder
    a root that reads nothing until someone puts something there)."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name (it would allow the whole working folder): give a folder")
    if not Path(text).expanduser().is_dir():
        what = "is not a folder" if Path(text).expanduser().exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}: give a folder the page may read images from")
    return Path(text).expanduser()


def main(argv: list[str]) -> int:
    import uvicorn

    from imgclf.deploy.connections import timed_protocol

    parser = serve_parser()
    args = parser.parse_args(argv)
    for name in ("max_concurrent", "max_connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: an integer of at least 1")
    for name in ("max_upload_mb", "max_request_megapixels", "header_timeout", "min_body_rate", "inference_timeout"):
        if not 0 < getattr(args, name) < float("inf"):  # nan too
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: a finite number above 0")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not valid: an integer from 1 to 65535")
    if why := cannot_listen(args.host, args.port):  # before the banner, and before seconds of loading
        print(f"error: {why}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="imgclf serve: %(message)s")
    args.uri = take_uri_credentials(args.uri)  # user:password into MLflow's variables: never on the page
    # one temporary folder (downloaded models, run pictures, uploads), removed however the server stops: under
    # the default SIGTERM handler the process would end before the folder's removal, so SIGTERM is an exception
    # here until the folder is gone, then ends the process as SIGTERM does
    signal.signal(signal.SIGTERM, _stop)
    try:
        with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as cache:
            try:
                service = _service(args, Path(cache))
            except (*USER_ERRORS, OSError) as exc:  # OSError: --review's folders missing or outside the roots
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"imgclf serve: {service.model.ref} on http://{args.host}:{args.port}", flush=True)
            app = create_app(service, loopback_names(args.host))
            logging.getLogger("uvicorn.error").addFilter(_not_cancelled)
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                        limit_concurrency=args.max_connections, timeout_graceful_shutdown=GRACE_SECONDS,
                        http=timed_protocol(args.header_timeout, args.min_body_rate * 1000))  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C while it loads (once it serves, uvicorn takes Ctrl-C and returns)
        return 130
    except _Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    return 0


def _service(args, cache: Path) -> Service:
    from imgclf.deploy.review import Review

    start = Path(args.model).expanduser()
    review = Review(args.review, args.allow_root) if args.review else None
    model = load_model(args.model, args.uri, cache, timeout=args.inference_timeout)
    trained = model_home(start) / "model.pt" if start.exists() else None
    explainer = note = None
    if trained is not None and trained.is_file() and not args.no_explain:
        from imgclf.deploy.explain import Explainer

        try:
            explainer = Explainer(trained, model.classifier.class_names, made_for=model.classifier)
        except USER_ERRORS as exc:  # another network's checkpoint: no Grad-CAM rather than a wrong one
            note = f"no Grad-CAM: {exc}"
            log.warning("%s", note)
    return Service(
        model,
        cache=cache,
        uri=args.uri,
        experiment=args.experiment,
        roots=args.allow_root,
        max_upload_mb=args.max_upload_mb,
        max_concurrent=args.max_concurrent,
        max_request_pixels=int(args.max_request_megapixels * 1e6),
        inference_timeout=args.inference_timeout,
        # the model it starts with was chosen on this machine's command line: the page may switch between the
        # models beside it too (models/: model.pt, export/, optimised/)
        model_roots=[model_home(start)] if start.exists() else [],
        review=review,
        explainer=explainer,
        cam_note=note,
    )
