"""Fixtures: the project root, composed configs, and tiny image data sets made on the fly."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from . import memo, warm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
memo.install()  # conf/'s files loaded, and compositions composed, once per test process (tests/memo.py)


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """The user's ~/.cache is left alone: what runs put there (the outboxes of runs a test kills, above all) goes
    under the session's temporary folder instead, for the tests and every command they start."""
    cache = tmp_path_factory.getbasetemp().parent / "cache"  # one per session, shared by pytest-xdist's workers
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    warm.remember(os.environ)
    yield cache
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(autouse=True)
def no_engine_on_a_deleted_store():
    """MLflow keeps one store, and one SQLAlchemy engine, per store URI for the life of the process. A test's tmp_path
    can come back under the name a passed (and so deleted) test's had (pytest before 9 reuses the number), and what
    was kept for that URI would write to the deleted file ("attempt to write a readonly database"); a relative URI
    kept from one test's folder would write into another's: before each test, engines whose file is gone or named
    relative are dropped, and with them the stores MLflow keeps."""
    gone = False
    for module in ("tracking", "model_registry", "jobs"):
        store = sys.modules.get(f"mlflow.store.{module}.sqlalchemy_store")
        engines = getattr(getattr(store, "SqlAlchemyStore", None), "_engine_map", {})
        for uri in [u for u in engines if u.startswith("sqlite:///") and _stale(Path(u[len("sqlite:///") :]))]:
            engines.pop(uri).dispose()
            gone = True
    if gone:
        from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
        from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

        for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
            registry._get_store_with_resolved_uri.cache_clear()


def _stale(store: Path) -> bool:
    """A kept engine's file is gone, or named relative to a folder: `sqlite:///mlflow.db` is another test's file in
    another folder (the project's own, once `make pipeline` has made one, would hide it)."""
    return not store.is_absolute() or not store.exists()


@pytest.fixture
def project_env(monkeypatch):
    """Environment for subprocesses: the venv's tools first on PATH, after tests/warm.py's `python` (the stages DVC
    starts, `python -m imgclf.stages.*`, run in a warm interpreter)."""
    env = dict(os.environ, PATH=os.pathsep.join([str(warm.shim()), str(BIN), os.environ.get("PATH", "")]))
    env.pop("IMGCLF_DEBUG", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri() in an earlier in-process test exports it
    return env


def console(function, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A console command's own function (`imgclf.cli.runs`, `predict`: what the script calls with sys.argv[2:]) in
    this process, in `cwd`, with its exit code and what it printed: a process start (seconds of imports) saved
    where the test is about the command, not about the script; each command keeps one test of its script."""
    import contextlib
    import io

    out, err, before, saved = io.StringIO(), io.StringIO(), os.getcwd(), dict(os.environ)
    os.chdir(cwd)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = function(list(argv))
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code
    finally:
        os.chdir(before)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def stage_main(stage: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m imgclf.stages.<stage> ARGV` through the stage's real `main` (override check, Hydra, typed options),
    in this process: see `console`."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    module = importlib.import_module(f"imgclf.stages.{stage}")

    def main(args: list[str]) -> int:
        import signal

        saved, handler = sys.argv, signal.getsignal(signal.SIGTERM)
        sys.argv = [f"imgclf.stages.{stage}", *args]
        GlobalHydra.instance().clear()
        try:
            module.main()
        finally:
            sys.argv = saved
            signal.signal(signal.SIGTERM, handler)  # the stage's own (SIGTERM ends the run) stays with the stage
            GlobalHydra.instance().clear()
        return 0

    return console(main, argv, cwd)


def make_class_folders(root: Path, classes: dict[str, int], size: int = 8, seed: int = 0) -> Path:
    """Write `n` PNGs per class; each class has its own mean colour so a tiny net can learn it."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), dtype=np.float32)
        base[..., c % 3] = 200.0
        base[: size // 2, :, (c + 1) % 3] = 60.0 * (c // 3)
        for i in range(n):
            noise = rng.normal(0, 20, base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def compose_cfg():
    """Compose conf/ with overrides, as the stages see it."""
    from imgclf.config import compose

    def _compose(*overrides: str):
        return compose(overrides, root=ROOT)

    return _compose


_EMPTY_STORE: list[Path] = []


def empty_mlflow_store(dest: Path) -> Path:
    """An empty MLflow SQLite store at `dest`: a copy of one this worker created once. Creating a store runs all
    of MLflow's schema migrations (seconds); tests of store creation itself use a path of their own."""
    if not _EMPTY_STORE or not _EMPTY_STORE[0].is_file():
        import atexit
        import tempfile

        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="imgclf-empty-store-")) / "mlflow.db"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _EMPTY_STORE[:] = [template]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], dest)
    return dest


_TINY: list[Path] = []  # this process's tiny project, made once (make_tiny_project copies it)


def make_tiny_project(root: Path) -> Path:
    """data/tiny under root: 3 classes of 20 images, already split (36/12/12), and an empty MLflow store. Made once
    per test process and copied (no file of it names the folder it is in): the same files each time, without
    drawing, encoding and hashing the images again."""
    if not _TINY or not _TINY[0].is_dir():
        import atexit
        import tempfile

        _TINY[:] = [_tiny_project(Path(tempfile.mkdtemp(prefix="imgclf-tiny-")))]
        atexit.register(shutil.rmtree, _TINY[0], ignore_errors=True)
    # files written anew, as making them would (their times now)
    shutil.copytree(_TINY[0] / "data", root / "data", copy_function=shutil.copyfile, dirs_exist_ok=True)
    empty_mlflow_store(root / "mlflow.db")
    return root


def _tiny_project(root: Path) -> Path:
    from imgclf.data.folder import scan_image_folder
    from imgclf.data.report import build_report
    from imgclf.data.split import stratified_split, write_split
    from imgclf.files import write_json

    images = make_class_folders(root / "data" / "tiny" / "images", {"a": 20, "b": 20, "c": 20})
    scan = scan_image_folder(images)
    splits = stratified_split(scan.items, 0.2, 0.2, seed=0)
    digests = {path: info.sha256 for path, info in scan.info.items()}
    write_split(root / "data" / "tiny" / "split", splits, scan.class_names, 4, seed=0, digests=digests)
    write_json(root / "data" / "tiny" / "split" / "report.json", build_report(scan, splits))  # as split writes it
    return root


def trained_tiny_project(root: Path, epochs: int = 3) -> Path:
    """make_tiny_project(root), then train, evaluate and export it (in this process, SQLite store in root)."""
    from imgclf.config import compose
    from imgclf.stages.evaluate import evaluate
    from imgclf.stages.export import export
    from imgclf.stages.train import train

    make_tiny_project(root)
    cfg = compose([*TINY_OVERRIDES, f"trainer.epochs={epochs}", f"tracking.uri=sqlite:///{root}/mlflow.db"], root=ROOT)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train(cfg)
        evaluate(cfg)
        export(cfg)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A working directory holding data/tiny with 3 classes, already split, and an MLflow store."""
    make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# timm's test_resnet (0.47 M parameters, batch norm, a Linear head) at 32 px: tests that are not about one
# architecture train it in a fraction of a second an epoch, with checkpoints of a few MB (AlexNet's are 690 MB)
TINY_MODEL = ("model=timm", "model.name=test_resnet", "model.image_size=32")
TINY_DATA = (
    "data.name=tiny",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.log_every=1",
    "tracking.experiment=test",
)  # with a network of the test's own choosing
TINY_OVERRIDES = (*TINY_DATA, *TINY_MODEL)


@pytest.fixture
def tiny_cfg(tiny_project, compose_cfg):
    def _cfg(*overrides: str):
        return compose_cfg(*TINY_OVERRIDES, f"tracking.uri=sqlite:///{tiny_project}/mlflow.db", *overrides)

    return _cfg


def serve_client(project: Path, cache: Path, roots: list[Path], *, max_upload_mb: float = 1, **options):
    """A TestClient of `imgclf serve`'s real app on `project`'s export, reading only under `roots`; the Service is
    at `client.service` (limits can be changed there)."""
    from fastapi.testclient import TestClient

    from imgclf.deploy.model_card import load_model
    from imgclf.deploy.webapp import Service, create_app

    uri = f"sqlite:///{project}/mlflow.db"
    cache.mkdir(parents=True, exist_ok=True)
    model = load_model(str(project / "models/export"), uri, cache)
    service = Service(
        model, cache=cache, uri=uri, experiment="test", roots=roots, max_upload_mb=max_upload_mb, **options
    )
    client = TestClient(create_app(service), raise_server_exceptions=False)
    client.service = service
    return client


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, worker_id):
    """One tiny project trained, evaluated and exported per test session, shared read-only by the tests of hostile
    inputs (they copy what they change). Under pytest-xdist the first worker to need it trains it in the session's
    base folder, under a lock the others wait on: seconds of training once, not once per worker."""
    if worker_id == "master":  # no xdist
        return trained_tiny_project(tmp_path_factory.mktemp("trained"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # one folder per session, above each worker's own
    project, done = shared / "trained", shared / "trained.done"
    with FileLock(str(shared / "trained.lock")):
        if not done.is_file():
            shutil.rmtree(project, ignore_errors=True)  # a worker that failed half-way left it
            trained_tiny_project(project)
            done.touch()
    return project


def copy_of(project: Path, dest: Path) -> Path:
    """A copy of a trained project that tests may write beside (a copy, not a second training: seconds saved). Its
    MLflow store still points at the original's artifacts: read them, never log to the copy's runs."""
    shutil.copytree(project, dest, ignore=shutil.ignore_patterns("outputs", "checkpoints"))
    return dest


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1; yields (base_url, www_dir, request_log).

    /down/* answers 503 (a mirror that is down); /short/* sends half the bytes it promises (a truncated download);
    /slow/* sends half, then waits a minute before the rest (time to kill the process that downloads).
    """
    import functools
    import http.server
    import threading
    import time

    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/down/"):
                self.send_error(503, "mirror down")
                return
            for prefix in ("/short/", "/slow/"):
                if self.path.startswith(prefix):
                    body = (www / self.path[len(prefix) :]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if prefix == "/slow/":
                        time.sleep(60)
                        self.wfile.write(body[len(body) // 2 :])
                    return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www, requests
    finally:
        server.shutdown()
        server.server_close()


# what makes a test slow: it trains a project, starts processes or servers (`make test-fast` leaves these out)
SLOW_FIXTURES = {"tiny_project", "trained_project", "project_env", "tiny_cfg", "postgres", "browser", "http_server"}
SLOW_CALLS = ("subprocess", "Popen", "trained_tiny_project", "make_tiny_project", "sh([", "@SETTINGS", "100_000")


@functools.cache
def _source(function) -> str | None:
    """A function's source, read once: the parametrized tests and the shared fixtures and helpers ask again."""
    import inspect

    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None


def is_slow(item) -> bool:
    """The test, its fixtures and the helpers of its own module they call (transitively) train or start something."""
    import inspect
    import re

    if item.get_closest_marker("slow") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    functions = [item.function]
    fixtures = item._fixtureinfo.name2fixturedefs.values() if hasattr(item, "_fixtureinfo") else ()
    functions += [d.func for defs in fixtures for d in defs]
    helpers = {
        name: obj
        for name, obj in vars(item.module).items()
        if inspect.isfunction(obj) and obj.__module__ == item.module.__name__
    }
    source, seen = "", set()
    while functions:
        function = functions.pop()
        if function in seen:
            continue
        seen.add(function)
        text = _source(function)
        if text is None:
            return True
        source += text
        functions += [helpers[name] for name in re.findall(r"\b(\w+)\(", text) if name in helpers]
    return any(call in source for call in SLOW_CALLS)


# the end-to-end files, longest first; the suite's wall time is at least the longest of them
HEAVIEST = (
    "test_pipeline.py",
    "test_folder.py",
    "test_tracking_server.py",
    "test_queue.py",
    "test_label_review.py",
    "test_slurm.py",
    "test_serve.py",
)


def worksteal_shares(count: int, workers: int) -> list[int]:
    """How many tests pytest-xdist's worksteal hands each worker at the start: the order cut into consecutive
    shares, before any worker steals from another."""
    sizes: list[int] = []
    for i in range(workers):
        sizes.append((count - sum(sizes)) // (workers - i))
    return sizes


def arrange(items: list, workers: int) -> list:
    """The order for `workers` worksteal workers: the heaviest end-to-end files dealt out to the workers' shares in
    snake order (the first worker's second file is the last worker's first), so that each worker starts on one and
    none runs two of the longest in a row; each share then filled up with the stage tests, then the rest. Within a
    file the order is kept."""
    heavy = {name: [i for i in items if i.path.parent.name == "e2e" and i.path.name == name] for name in HEAVIEST}
    dealt = {id(i) for group in heavy.values() for i in group}
    rest = sorted((i for i in items if id(i) not in dealt), key=lambda i: i.path.parent.name != "stages")
    shares: list[list] = [[] for _ in range(workers)]
    for rank, name in enumerate(HEAVIEST):
        lap, position = divmod(rank, workers)
        shares[position if lap % 2 == 0 else workers - 1 - position].extend(heavy[name])
    fill = iter(rest)
    for share, size in zip(shares, worksteal_shares(len(items), workers)):
        share.extend(itertools.islice(fill, max(0, size - len(share))))
    return [i for share in shares for i in share] + list(fill)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    """Mark what is slow (see is_slow) before `-m "not slow"` deselects; after it, arrange what runs: `make test`
    runs pytest-xdist's worksteal on one worker per core, each starting on its share of this order (see arrange), so
    the longest end-to-end tests start at once, on different workers, instead of last."""
    for item in items:
        if is_slow(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    yield
    items[:] = arrange(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_collection_finish(session):
    """Every test module is imported (torch, MLflow, Hydra: millions of objects that live as long as the worker):
    frozen, the garbage collector's full collections during the tests no longer walk them."""
    import gc

    gc.collect()
    gc.freeze()
