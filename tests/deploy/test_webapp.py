"""imgclf serve's edges, on the real app in this process: what it may read (after resolving symlinks, only under
its roots, with no existence oracle outside them), who may change it (its own page, JSON only), what a request may
cost (bodies counted as they arrive, images refused past the pixel limit from their header), and what it logs."""

import json
import logging
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from imgclf.data.images import MAX_PIXELS

from ..conftest import copy_of, serve_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def served(trained_project, tmp_path):
    """(client, root, outside): the app serving the trained export, allowed to read `root` only."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    source = sorted((trained_project / "data/tiny/images/a").iterdir())
    for i, image in enumerate(source[:2]):
        (root / "images" / f"{i}.png").write_bytes(image.read_bytes())
        (outside / f"secret{i}.png").write_bytes(image.read_bytes())
    client = serve_client(trained_project, tmp_path / "cache", [root], model_roots=[trained_project / "models"])
    return client, root, outside


def test_paths_outside_the_roots_answer_the_same_whether_they_exist_or_not(served):
    client, root, outside = served
    answers = [client.post("/api/classify", data={"path": str(p)}) for p in (outside / "secret0.png", outside / "no")]
    assert [a.status_code for a in answers] == [403, 403]
    assert [a.json()["error"].split(" is outside")[1] for a in answers][0] == answers[1].json()["error"].split(
        " is outside"
    )[1]
    for sneaky in (str(root / ".." / "outside" / "secret0.png"), "~/../../etc/passwd", "/etc/passwd"):
        assert client.post("/api/classify", data={"path": sneaky}).status_code == 403


def test_a_file_name_that_is_not_utf8_in_a_served_folder_is_classified_and_shown_escaped(served):
    import os

    client, root, _ = served
    named = root / "odd"
    named.mkdir()
    (named / os.fsdecode(b"bad\xff.png")).write_bytes((root / "images/0.png").read_bytes())
    answer = client.post("/api/classify", data={"path": str(named)})
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["results"]
    assert row["name"] == f"{named}/bad\\xff.png" and row["error"] is None and row["top"]


def test_list_files_and_folders_are_read_only_under_the_roots(served):
    client, root, outside = served
    (root / "images" / "link.png").symlink_to(outside / "secret1.png")  # a member that leads outside
    listing = root / "list.txt"
    listing.write_text(f"{outside / 'secret0.png'}\n{outside / 'missing.png'}\n{root / 'images' / '0.png'}\n")
    rows = client.post("/api/classify", data={"path": str(listing)}).json()["results"]
    assert [r["error"] for r in rows] == ["outside the allowed roots", "outside the allowed roots", None]
    assert "thumbnail" not in rows[0] and rows[2]["thumbnail"].startswith("data:image/jpeg")
    rows = client.post("/api/classify", data={"path": str(root / "images")}).json()["results"]
    by_name = {r["name"].rsplit("/", 1)[1]: r for r in rows}
    assert by_name["link.png"]["error"] == "outside the allowed roots" and "thumbnail" not in by_name["link.png"]
    assert by_name["0.png"]["top"] and by_name["1.png"]["top"]
    # a relative line is read from the list's folder (not the server's), and a list of lines outside the roots gets
    # the same answer whether what they name exists or not
    (root / "images" / "relative.txt").write_text("0.png\n")
    rows = client.post("/api/classify", data={"path": str(root / "images" / "relative.txt")}).json()["results"]
    assert len(rows) == 1 and rows[0]["top"]
    answers = []
    for name in ("secret0.png", "missing.png"):
        (root / f"only_{name}.txt").write_text(f"{outside / name}\n")
        answers.append(client.post("/api/classify", data={"path": str(root / f"only_{name}.txt")}))
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].json()["error"].replace("secret0", "missing") == answers[1].json()["error"]


def test_models_are_switched_only_from_under_the_roots_and_only_by_json(served, trained_project, tmp_path):
    client, root, outside = served
    (root / "ir").mkdir()  # an OpenVINO IR given by its own name: OpenVINO reads foo.bin beside foo.xml
    (root / "ir" / "foo.xml").write_text("<net/>")
    (outside / "weights.bin").write_bytes(b"\0" * 64)
    (root / "ir" / "foo.bin").symlink_to(outside / "weights.bin")
    answer = client.post("/api/model", json={"model": str(root / "ir" / "foo.xml")})
    assert answer.status_code == 403 and "foo.bin is outside the allowed roots" in answer.json()["error"]
    (outside / "model").mkdir()
    for name in ("model.onnx", "labels.txt", "preprocessing.json"):
        (outside / "model" / name).write_bytes((trained_project / "models/export" / name).read_bytes())
    assert client.post("/api/model", json={"model": str(outside / "model")}).status_code == 403
    assert client.post("/api/model", json={"model": str(outside / "nothing")}).status_code == 403
    for body, kind in (("not json", "application/json"), ("[1]", "application/json"), ('{"model": 3}', None)):
        headers = {"content-type": kind} if kind else {"content-type": "application/json"}
        answer = client.post("/api/model", content=body, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"].startswith("the body must be a JSON object")
    plain = client.post("/api/model", content=json.dumps({"model": "x"}), headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    # a model folder whose labels.txt is huge (read whole, it took gigabytes) or a pipe (the read would block)
    (root / "big").mkdir()
    for name in ("model.onnx", "preprocessing.json"):
        (root / "big" / name).write_bytes((trained_project / "models/export" / name).read_bytes())
    with open(root / "big" / "labels.txt", "wb") as f:
        f.truncate(64 << 20)  # sparse: no disk, but 64 MB to read
    answer = client.post("/api/model", json={"model": str(root / "big")})
    assert answer.status_code == 400 and "labels.txt: more than 16 MB" in answer.json()["error"]
    (root / "big" / "labels.txt").unlink()
    os.mkfifo(root / "big" / "labels.txt")
    answer = client.post("/api/model", json={"model": str(root / "big")})
    assert answer.status_code == 400 and "labels.txt: not a regular file" in answer.json()["error"]
    # a checkpoint beside the served export: the card finds its run (run.json beside model.pt)
    card = client.post("/api/model", json={"model": str(trained_project / "models/model.pt")}).json()
    assert card["run_id"] == json.loads((trained_project / "models/run.json").read_text())["run_id"]


def test_only_the_page_itself_may_post(served):
    from fastapi.testclient import TestClient

    from imgclf.deploy.access import LOOPBACK
    from imgclf.deploy.webapp import create_app

    client, root, _ = served
    image = str(root / "images" / "0.png")
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "null"},  # a sandboxed frame, a file:// page
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # another port of the same host: another origin
        {"referer": "http://evil.example/page"},  # a browser that sends no Origin
        {"referer": "http://testserver:8080/"},
    ):
        assert client.post("/api/classify", data={"path": image}, headers=headers).status_code == 403, headers
        assert client.post("/api/model", json={"model": "x"}, headers=headers).status_code == 403, headers
        for path in ("/api/model", "/api/runs", "/api/picture/x"):  # another site's <img src>: a slot and decoding
            assert client.get(path, headers=headers).status_code == 403, (path, headers)
    assert client.get("/", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # a link to the page
    for headers in (
        {"origin": "http://testserver"},
        {"referer": "http://testserver/"},
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},  # typed, or a bookmark
        {},  # not a browser: curl, a script
    ):
        own = client.post("/api/classify", data={"path": image}, headers=headers)
        assert own.status_code == 200 and own.json()["results"][0]["top"], headers
    # on loopback, a request naming another host (a page that rebound its name to 127.0.0.1) is refused
    guarded = TestClient(create_app(client.service, LOOPBACK))
    assert guarded.get("/api/model").status_code == 403
    assert guarded.get("/api/model", headers={"host": "127.0.0.1:7860"}).status_code == 200
    assert guarded.get("/api/model", headers={"host": "localhost"}).status_code == 200


def test_bodies_are_counted_as_they_arrive(served):
    client, root, _ = served

    def chunks():
        for _ in range(40):
            yield b"\0" * 50_000  # 2 MB in all against a 1 MB limit, without a Content-Length

    answer = client.post("/api/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "over the limit of 1 MB" in answer.json()["error"]
    big = client.post("/api/classify", files={"files": ("a.png", b"\0" * 1_200_000)})
    assert big.status_code == 413 and big.json()["error"] == "upload of 1.2 MB is over the limit of 1 MB"


def test_images_past_the_pixel_limit_are_refused_from_their_header(served, monkeypatch):
    from PIL import ImageFile

    client, _, _ = served
    side = int((MAX_PIXELS * 1.9) ** 0.5)  # between PIL's warning and its error: PIL alone would decode it
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded past the limit"))
    rows = client.post("/api/classify", files={"files": ("bomb.png", png_header(side, side))}).json()["results"]
    assert rows[0]["error"] == f"image of {side} x {side} pixels is over the limit of {MAX_PIXELS:,} pixels"
    # a WebP's decoder takes about twice the memory a pixel: 8192 x 5600 (a 34-byte lossless WebP) is refused too
    webp = bytes.fromhex("524946461a000000574542505650384c0e0000002fffdf7705071011fd0f4444ff03")
    rows = client.post("/api/classify", files={"files": ("bomb.webp", webp)}).json()["results"]
    assert rows[0]["error"] == f"image of 8192 x 5600 pixels is over the limit of {MAX_PIXELS // 2:,} pixels"


def test_each_client_error_is_one_log_line(served, caplog):
    client, root, outside = served
    caplog.set_level(logging.INFO)
    requests = [
        lambda: client.post("/api/classify", data={"path": "/etc/passwd"}),  # 403
        lambda: client.post("/api/classify", data={"path": str(root / "missing.png")}),  # 404
        lambda: client.post("/api/classify", data={}),  # 400
        lambda: client.post("/api/model", content="x", headers={"content-type": "application/json"}),  # 400
        lambda: client.get("/api/picture/nothing"),  # 404
        lambda: client.get("/nowhere"),  # 404
        lambda: client.post(  # a form cut off mid-part
            "/api/classify",
            content=b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\nabc',
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        lambda: client.post(  # a part with no name
            "/api/classify",
            content=b"--b\r\nContent-Type: text/plain\r\n\r\nabc\r\n--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
    ]
    for send in requests:
        caplog.clear()
        status = send().status_code
        assert 400 <= status < 500
        lines = [r for r in caplog.records if r.name == "imgclf.deploy.webapp"]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING and f"-> {status}:" in lines[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)  # no traceback for a client's mistake


def test_thumbnails_use_the_one_decoder(tmp_path):
    from imgclf.deploy.pictures import thumbnail

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))
    assert thumbnail(tmp_path / "ok.png", 16).startswith("data:image/jpeg;base64,")
    assert thumbnail(tmp_path / "bomb.png", 16) is None


def test_no_way_around_the_roots_through_links_tildes_or_dots(served, trained_project, tmp_path):
    from imgclf.deploy.access import open_inside

    client, root, outside = served
    for path in (f"{root}/images/../images/0.png", "~/x.png", f"~root/../{root}/images/0.png"):
        assert client.post("/api/classify", data={"path": path}).status_code == 403, path
    # a model folder under the root whose files lead outside: refused, not read
    (root / "model").mkdir()
    for name in ("model.onnx", "labels.txt", "preprocessing.json"):
        (outside / name).write_bytes((trained_project / "models/export" / name).read_bytes())
        (root / "model" / name).symlink_to(outside / name)
    assert client.post("/api/model", json={"model": str(root / "model")}).status_code == 403
    # what is opened is checked on the open file: a link swapped in after the path was checked is refused
    (root / "images" / "late.png").symlink_to(outside / "secret0.png")
    with pytest.raises(PermissionError):
        open_inside(root / "images" / "late.png", [root])
    with open_inside(root / "images" / "0.png", [root]) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_loopback_servers_answer_only_to_loopback_names(served):
    from fastapi.testclient import TestClient

    from imgclf.deploy.access import loopback_names
    from imgclf.deploy.webapp import create_app

    client, _, _ = served
    assert loopback_names("0.0.0.0") is None and loopback_names("example.org") is None
    assert loopback_names("::") is None and loopback_names("no such host.invalid") is None
    guarded = TestClient(create_app(client.service, loopback_names("127.0.0.2")))
    assert guarded.get("/api/model", headers={"host": "attacker.example:7860"}).status_code == 403
    assert guarded.get("/api/model", headers={"host": "127.0.0.2:7860"}).status_code == 200
    # loopback spelt otherwise: each took any Host, so a rebinding page could read and write through the server
    for host in ("127.1", "2130706433", "0x7f000001", "::ffff:127.0.0.1"):
        guarded = TestClient(create_app(client.service, loopback_names(host)))
        assert guarded.get("/api/model", headers={"host": "attacker.example:7860"}).status_code == 403, host
        assert guarded.get("/api/model", headers={"host": "127.0.0.1:7860"}).status_code == 200, host


def test_what_a_request_may_cost_is_bounded(served, trained_project):
    client, root, _ = served
    many = client.post("/api/classify", data={f"field{i}": "x" for i in range(20)})
    assert many.status_code == 400  # fields beyond the form's few are refused, not held
    big = client.post("/api/classify", data={"path": "x" * 20_000})
    assert big.status_code == 400
    deep = client.post("/api/model", content="[" * 50_000, headers={"content-type": "application/json"})
    assert deep.status_code == 400
    long = client.post("/api/model", content=b" " * 70_000, headers={"content-type": "application/json"})
    assert long.status_code == 413
    image = (root / "images" / "0.png").read_bytes()
    named = client.post("/api/classify", files={"files": ("a.p\0g", image)})
    assert named.status_code == 200 and named.json()["results"][0]["top"]
    # a budget of pixels for all the images of one request: the ones past it are refused from their headers
    client.service.max_request_pixels = 2 * Image.open(root / "images" / "0.png").size[0] ** 2
    rows = client.post("/api/classify", files=[("files", (f"{i}.png", image)) for i in range(3)]).json()["results"]
    assert [bool(r.get("top")) for r in rows] == [True, True, False]
    assert rows[2]["error"].startswith("over this request's limit of pixels")


def test_the_runs_view_reads_the_curves_of_finished_and_running_runs(trained_project, tmp_path):
    import shutil

    from imgclf import tracking

    project = tmp_path / "project"
    shutil.copytree(trained_project, project, ignore=shutil.ignore_patterns("cache"))
    client = serve_client(project, tmp_path / "cache", [project / "data"])
    trained = json.loads((project / "models/run.json").read_text())["run_id"]
    listed = client.get("/api/runs").json()
    assert listed["experiment"] == "test" and listed["runs"][0]["run_id"] == trained
    assert listed["runs"][0]["status"] == "FINISHED" and "val/acc" in listed["runs"][0]["metrics"]
    curves = client.get(f"/api/runs/{trained}").json()["curves"]
    assert [step for step, _ in curves["train/loss"]] == [1, 2, 3] and {"val/loss", "val/acc"} <= set(curves)
    uri = f"sqlite:///{project}/mlflow.db"

    def val_acc(run_id, points):  # what the page polls for, once the run's records have reached the store
        deadline = time.monotonic() + 30
        while client.get(f"/api/runs/{run_id}").json()["curves"].get("val/acc") != points:
            assert time.monotonic() < deadline, client.get(f"/api/runs/{run_id}").json()
            time.sleep(0.1)
        return True

    with tracking.run(uri, "test", run_name="training-now") as live:  # a run still training: its first epoch
        tracking.log_metrics({"train/loss": 2.0, "val/loss": 2.1, "val/acc": 0.3}, step=1)
        assert val_acc(live, [[1, 0.3]])
        newest = client.get("/api/runs").json()["runs"][0]
        assert (newest["run_id"], newest["name"], newest["status"]) == (live, "training-now", "RUNNING")
        tracking.log_metrics({"train/loss": 1.0, "val/loss": 1.2, "val/acc": 0.6}, step=2)
        assert val_acc(live, [[1, 0.3], [2, 0.6]])  # the curve grows while the run trains
    with tracking.run(uri, "test", run_name="diverged") as diverged:  # a NaN made both views a 500
        tracking.log_metrics({"train/loss": 1.5, "val/acc": 0.4}, step=1)
        tracking.log_metrics({"train/loss": float("nan"), "val/acc": float("nan")}, step=2)
    deadline = time.monotonic() + 30
    while (listed := client.get("/api/runs")).status_code != 200 or listed.json()["runs"][0]["status"] != "FINISHED":
        assert time.monotonic() < deadline, listed.text
        time.sleep(0.1)
    assert listed.json()["runs"][0]["metrics"] == {"val/acc": "nan"}
    assert client.get(f"/api/runs/{diverged}").json()["curves"]["train/loss"] == [[1, 1.5]]  # where it stops
    for bad in ("0" * 31, "../../etc/passwd", "f" * 32):
        answer = client.get(f"/api/runs/{bad}")
        assert answer.status_code in (400, 404) and "error" in answer.json()


def test_classify_one_shows_where_the_network_looked_while_its_own_model_is_served(trained_project, tmp_path):
    from imgclf.deploy.explain import Explainer

    model = trained_project / "models/model.pt"
    root = trained_project / "data"
    client = serve_client(trained_project, tmp_path / "cache", [root])
    client.service.explainer = Explainer(model, client.service.model.classifier.class_names)
    one = client.post("/api/classify", data={"path": str(root / "tiny/images/b/000.png")}).json()["results"]
    assert one[0]["cam"].startswith("data:image/png;base64,")
    many = client.post("/api/classify", data={"path": str(root / "tiny/images/b")}).json()["results"]
    assert len(many) == 20 and not any("cam" in r for r in many)  # Classify Many: no maps
    client.service.explained = "another model"  # a model switched to from the picker: not the checkpoint's network
    other = client.post("/api/classify", data={"path": str(root / "tiny/images/b/000.png")}).json()["results"]
    assert "cam" not in other[0]


def test_grad_cam_is_drawn_after_a_switch_only_for_a_model_of_the_explainers_network(trained_project, tmp_path):
    """The page switched to models/export again after a retrain and re-export (the same name, another network):
    Grad-CAM was drawn from the network loaded at start, beside the new model's class."""
    import json

    from imgclf.deploy.explain import Explainer

    project = copy_of(trained_project, tmp_path / "project")
    root = project / "data"
    client = serve_client(project, tmp_path / "cache", [root], model_roots=[project / "models"])
    made_for = client.service.model.classifier
    client.service.explainer = Explainer(project / "models/model.pt", made_for.class_names, made_for=made_for)
    image = {"path": str(root / "tiny/images/b/000.png")}
    assert client.post("/api/model", json={"model": str(project / "models/export")}).status_code == 200
    assert "cam" in client.post("/api/classify", data=image).json()["results"][0]  # the same network: drawn
    record = project / "models/export/run.json"
    run = json.loads(record.read_text())
    record.write_text(json.dumps({**run, "checkpoint_sha256": "0" * 64}))  # what a re-export of a retrain records
    assert client.post("/api/model", json={"model": str(project / "models/export")}).status_code == 200
    assert "cam" not in client.post("/api/classify", data=image).json()["results"][0]


def test_grad_cam_and_model_loads_run_one_at_a_time_whatever_the_number_of_clients(
    trained_project, tmp_path, monkeypatch
):
    """Grad-CAM's hooks hold one call's activations on the one network, and two loads of one run would write one
    cache folder at once: each runs alone, while --max-concurrent requests classify side by side."""
    import threading

    from fastapi.testclient import TestClient

    from imgclf.deploy import webapp

    root = trained_project / "data"
    service = serve_client(trained_project, tmp_path / "cache", [trained_project], max_concurrent=4).service
    running, most, guard = {}, {}, threading.Lock()

    def alone(kind, result):
        def call(*args, **kwargs):
            with guard:
                running[kind] = running.get(kind, 0) + 1
                most[kind] = max(most.get(kind, 0), running[kind])
            time.sleep(0.05)
            with guard:
                running[kind] -= 1
            return result

        return call

    class Explainer:
        overlay = staticmethod(alone("overlay", np.zeros((4, 4, 3), np.uint8)))
        explains = staticmethod(lambda classifier: True)  # the same network after each switch

    service.explainer = Explainer()
    monkeypatch.setattr(webapp, "load_model", alone("load", service.model))
    image, export = str(root / "tiny/images/b/000.png"), str(trained_project / "models/export")
    with TestClient(webapp.create_app(service)) as app:
        calls = [lambda: app.post("/api/classify", data={"path": image})] * 4
        calls += [lambda: app.post("/api/model", json={"model": export})] * 4
        answers: list[int] = []
        asking = [threading.Thread(target=lambda c=c: answers.append(c().status_code)) for c in calls]
        for thread in asking:
            thread.start()
        for thread in asking:
            thread.join()
    assert answers == [200] * 8 and most == {"overlay": 1, "load": 1}


def test_sigterm_while_the_model_loads_stops_serve_through_a_library_that_catches_every_exception(monkeypatch):
    """MLflow retries an unreachable server for minutes inside `except Exception`: SIGTERM then must still stop
    serve, not be swallowed there and leave it to start serving."""
    import contextlib
    import signal
    import socket

    from imgclf.cli import _serve as serve

    def loading(args, cache):
        with contextlib.suppress(Exception):  # a library that swallows what it catches, and goes on
            serve._stop(signal.SIGTERM, None)  # SIGTERM arrives while it retries
        raise AssertionError("serve went on loading after SIGTERM")

    raised, handler = [], signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(serve, "_service", loading)
    monkeypatch.setattr(signal, "raise_signal", raised.append)  # not this test process: what serve sends itself
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    try:
        serve.main(["--port", str(port)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert raised == [signal.SIGTERM]


def test_a_form_holds_one_open_file_however_many_it_sends_and_at_most_500(served, monkeypatch):
    """Each uploaded file is written to disk and closed as its part ends: by the time the request's slot is free it
    holds its files on disk, not open (the sender does not choose how many files the server holds open); a 501st
    file is refused before it is opened."""
    import os

    client, _, _ = served
    seen = []

    def classify(uploads, path):  # what a request holds by the time its slot is free
        seen.append(([(name, p.read_bytes()) for name, p in uploads], len(os.listdir("/proc/self/fd"))))
        return {"latency_ms": 0, "model": "", "results": []}

    monkeypatch.setattr(client.service, "classify", classify)
    before = len(os.listdir("/proc/self/fd"))
    sent = [(f"{i}.png", b"\x89PNG" + bytes([i])) for i in range(200)]
    assert client.post("/api/classify", files=[("files", f) for f in sent]).status_code == 200
    [(uploads, open_then)] = seen
    assert uploads == sent and open_then < before + 20  # not one per file
    over = client.post("/api/classify", files=[("files", (f"{i}.png", b"x")) for i in range(501)])
    assert (
        over.status_code == 400
        and over.json()["error"] == "more than 500 files in one form; send at most 500 at a time"
    )
    assert len(seen) == 1 and not list(client.service.cache.glob("upload-*"))  # never classified; nothing left


def test_bad_numbers_and_a_port_in_use_are_one_line_before_anything_loads(capsys):
    import socket

    from imgclf.cli._serve import main

    for args, says in (
        (["--port", "99999"], "--port 99999 is not valid: an integer from 1 to 65535"),
        (["--max-upload-mb", "nan"], "--max-upload-mb nan is not valid: a finite number above 0"),
        (["--max-request-megapixels", "inf"], "--max-request-megapixels inf is not valid: a finite number above 0"),
        (["--max-connections", "0"], "--max-connections 0 is not valid: an integer of at least 1"),
        # a trickled body held its connection for as long as it went on; a rate of 0 or nan would again
        (["--min-body-rate", "0"], "--min-body-rate 0.0 is not valid: a finite number above 0"),
        (["--min-body-rate", "-5"], "--min-body-rate -5.0 is not valid: a finite number above 0"),
        (["--min-body-rate", "inf"], "--min-body-rate inf is not valid: a finite number above 0"),
        (["--min-body-rate", "nan"], "--min-body-rate nan is not valid: a finite number above 0"),
        # a root of '' allowed the whole working folder; a file or a missing folder, nothing, silently
        (["--allow-root", ""], "--allow-root: an empty name (it would allow the whole working folder)"),
        (["--allow-root", "/nonexistent"], "--allow-root: /nonexistent does not exist: give a folder"),
        (["--allow-root", "/etc/hostname"], "--allow-root: /etc/hostname is not a folder"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--model", "/nonexistent"])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--model", "/nonexistent"]) == 1  # not the model's error: it never loads
    said = capsys.readouterr()
    assert said.out == "" and said.err == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); give " \
        "another --port\n"  # fmt: skip
    assert main(["--host", "10.255.255.254", "--model", "/nonexistent"]) == 1  # not an address of this machine
    said = capsys.readouterr().err
    assert said.startswith("error: cannot listen on 10.255.255.254:7860 (") and said.endswith(
        "; give --host an address of this machine\n"
    )


def test_review_listings_decode_in_the_servers_slots_whatever_the_number_of_clients(trained_project, tmp_path):
    """Each Review listing decodes an image per thumbnail: listings wait for one of --max-concurrent's slots, as
    classifications do, so memory follows the settings, not the number of clients asking at once."""
    import threading
    import time

    from fastapi.testclient import TestClient

    from imgclf.deploy.webapp import create_app

    busy, most, lock = [0], [0], threading.Lock()

    class Listing:  # a Review whose listing decodes (slowly) while it is counted
        def listing(self, thumbnail):
            with lock:
                busy[0] += 1
                most[0] = max(most[0], busy[0])
            time.sleep(0.2)
            with lock:
                busy[0] -= 1
            return {"issues": []}

    client = serve_client(trained_project, tmp_path / "cache", [tmp_path], max_concurrent=2, review=Listing())
    with TestClient(create_app(client.service)) as app:
        answers: list[int] = []
        asking = [threading.Thread(target=lambda: answers.append(app.get("/api/review").status_code)) for _ in range(6)]
        for thread in asking:
            thread.start()
        for thread in asking:
            thread.join()
    assert answers == [200] * 6 and most[0] == 2


def test_every_answer_forbids_framing_and_sniffing(served):
    client, root, _ = served
    answers = [
        client.get("/"),
        client.head("/"),
        client.get("/api/model"),
        client.get("/nowhere"),  # 404
        client.post("/api/classify", data={"path": "/etc/passwd"}),  # 403 from a route
        client.post("/api/model", json={"model": "x"}, headers={"origin": "http://evil.example"}),  # 403 at the door
        client.post("/api/classify", data={"path": "x" * 20_000}),  # 400 from the form parser
    ]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url


def test_head_answers_wherever_get_does_with_headers_only(served):
    client, root, _ = served
    for url in ("/", "/api/model", "/api/runs", "/nowhere", "/api/classify"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code and head.content == b"", url
        assert head.headers["content-type"] == got.headers["content-type"], url
        assert head.headers["content-length"] == got.headers["content-length"], url
    assert client.head("/").status_code == 200 and client.head("/api/classify").status_code == 405


def test_user_text_in_an_error_is_shown_escaped_whole_and_never_reaches_the_log_raw(served, caplog):
    client, root, _ = served
    caplog.set_level(logging.WARNING)
    answers = {
        "/etc/a\nb\x1b[2Jc\rd": client.post("/api/classify", data={"path": "/etc/a\nb\x1b[2Jc\rd"}),  # 403
        f"{root}/new\nline.png": client.post("/api/classify", data={"path": f"{root}/new\nline.png"}),  # 404
    }
    (root / "em\npty\tx").mkdir()  # a folder that is there, whose name a newline and a tab are part of
    answers[f"{root}/em\npty\tx"] = client.post("/api/classify", data={"path": f"{root}/em\npty\tx"})
    said = [a.json()["error"] for a in answers.values()]
    assert [a.status_code for a in answers.values()] == [403, 404, 400]
    assert said[0].startswith("/etc/a\\nb\\x1b[2Jc\\rd is outside the allowed roots: ")
    assert said[1] == f"{root}/new\\nline.png does not exist"
    assert said[2] == f"no images in {root}/em\\npty\\tx"
    assert client.get("/nowhere%1b[2J").status_code == 404
    logged = [r.getMessage() for r in caplog.records if r.name == "imgclf.deploy.webapp"]
    assert len(logged) == 4 and "/nowhere\\x1b[2J -> 404" in logged[3]
    assert not any(c in line for line in logged for c in "\n\r\x1b")


def test_a_folder_or_list_past_the_cap_is_refused_having_listed_no_further(served, monkeypatch):
    from pathlib import Path

    from imgclf.deploy.webapp import MAX_FILES

    client, root, _ = served
    many = root / "many"
    for part in range(3):
        (many / str(part)).mkdir(parents=True)
        for i in range(MAX_FILES // 2):
            (many / str(part) / f"{i}.png").write_bytes(b"")
    looked = []
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: looked.append(self) or is_file(self))
    answer = client.post("/api/classify", data={"path": str(many)})
    assert answer.status_code == 400
    assert answer.json()["error"] == f"{many} names more than 500 images; give at most 500 at a time"
    assert len(looked) < MAX_FILES + 20  # not the 750 there are
    # a list longer than the cap whose later lines are not even text: never read that far
    listed = root / "list.txt"
    listed.write_bytes(b"".join(f"{root}/images/0.png\n".encode() for _ in range(MAX_FILES + 1)) + b"\xff\n" * 100)
    answer = client.post("/api/classify", data={"path": str(listed)})
    assert answer.status_code == 400
    assert answer.json()["error"] == f"{listed} names more than 500 images; give at most 500 at a time"
    listed.write_bytes(f"{root}/images/0.png\n".encode() * MAX_FILES)  # at the cap: classified
    assert [bool(r["top"]) for r in client.post("/api/classify", data={"path": str(listed)}).json()["results"]] == [
        True
    ] * MAX_FILES


def test_a_hostile_multipart_form_is_refused_in_one_line_and_leaves_nothing(served):
    client, root, _ = served
    image = ("a.png", (root / "images" / "0.png").read_bytes())
    answers = {
        "more than 8 fields in one form": client.post(
            "/api/classify", files={"files": image}, data={f"f{i}": "x" for i in range(9)}
        ),
        "a form field over 8192 bytes": client.post("/api/classify", files={"files": image}, data={"path": "x" * 9000}),
        "not a readable multipart form (Maximum header size exceeded)": client.post(
            "/api/classify", files={"files": ("a" * 9000, b"x")}
        ),
        "a multipart form without a boundary": client.post(
            "/api/classify", content=b"x", headers={"content-type": "multipart/form-data"}
        ),
        "the multipart form is incomplete: it ends before its closing boundary": client.post(
            "/api/classify",
            content=b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + image[1][:50],
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        "a form part without a name": client.post(
            "/api/classify",
            content=b'--b\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nx\r\n--b--\r\n',
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
    }
    for says, answer in answers.items():
        assert answer.status_code == 400 and answer.json()["error"].startswith(says), (says, answer.text)
    assert not list(client.service.cache.glob("upload-*"))
    # a file sent under another name is not the page's: not classified, and it does not count as an upload
    rows = client.post("/api/classify", files=[("other", image), ("files", image)]).json()["results"]
    assert len(rows) == 1 and rows[0]["name"] == "a.png" and rows[0]["top"]


def test_serve_shows_no_grad_cam_from_a_checkpoint_the_served_model_was_not_exported_from(trained_project, tmp_path):
    """models/model.pt retrained, models/export not: Classify One says why there is no map, and draws none."""
    from fastapi.testclient import TestClient

    from imgclf.cli._serve import _service, serve_parser
    from imgclf.deploy.webapp import create_app

    from .test_predict import _retrained

    project = copy_of(trained_project, tmp_path / "project")
    _retrained(trained_project, tmp_path / "b")
    (project / "models/model.pt").write_bytes((tmp_path / "b/model.pt").read_bytes())
    root = project / "data"
    args = serve_parser().parse_args(["--model", str(project / "models/export"), "--uri", f"sqlite:///{project}/mlflow.db",
                                      "--allow-root", str(root)])  # fmt: skip
    with TestClient(create_app(_service(args, tmp_path / "cache"))) as app:
        row = app.post("/api/classify", data={"path": str(root / "tiny/images/b/000.png")}).json()["results"][0]
    assert "cam" not in row and row["top"]
    assert "is not the checkpoint" in row["cam_note"] and "re-export" in row["cam_note"]


def test_a_float_tiff_is_shown_as_the_decoder_sees_it_not_black(served, trained_project, tmp_path):
    """A 0-1 float TIFF: PIL's own convert made its thumbnail black, while the model was given its real values."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from imgclf.deploy.webapp import create_app

    client, root, _ = served
    Image.fromarray(np.full((30, 40), 0.8, np.float32), mode="F").save(root / "images/f.tif")
    with TestClient(create_app(client.service)) as app:
        row = app.post("/api/classify", data={"path": str(root / "images/f.tif")}).json()["results"][0]
    assert row["top"], row
    with Image.open(io.BytesIO(base64.b64decode(row["thumbnail"].split(",", 1)[1]))) as shown:
        assert abs(np.asarray(shown.convert("L"), np.float32).mean() - 0.8 * 255) < 8  # light gray, not black
