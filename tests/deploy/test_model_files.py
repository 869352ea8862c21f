"""Loading a model, from the page (serve's model switch) and from `imgclf predict`: every file the load reads lies
under the roots on the file opened, is a regular file read once, and the runtimes load exactly the bytes checked;
what a file on the server says is never shown on the page; and every run of the model ends."""

import errno
import json
import os
import shutil

import pytest

from imgclf.cli import predict

from ..conftest import console, serve_client
from .crafted import as_ir, looping, plain, within, write_contract

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
WAIT = 60  # seconds before a call counts as hung: past any load of these models on a busy machine


@pytest.fixture
def page(trained_project, tmp_path):
    """(client, root, outside): serve's app on one slot, 0.5 s a run, switching to models under `root` only."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    client = serve_client(trained_project, tmp_path / "cache", [root], max_concurrent=1, inference_timeout=0.5)
    return client, root, outside


def switch(client, model):
    return within(WAIT, lambda: client.post("/api/model", json={"model": str(model)}))


def an_image(trained_project) -> str:
    return str(sorted((trained_project / "data/tiny/images/a").iterdir())[0])


def release(fifo) -> None:
    """A reader blocked on the pipe `fifo` gets its end of file (nothing when none is)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise


def test_a_gate_json_is_read_only_under_the_roots_and_what_it_says_is_never_shown(page):
    client, root, outside = page
    (outside / "settings.json").write_text(json.dumps({"reason": "DB_PASSWORD=hunter2"}))
    (outside / "folder").mkdir()
    said = []
    for target in ("settings.json", "missing.json", "folder"):  # a file, nothing, a folder: the same answer
        (root / target).mkdir()
        (root / target / "gate.json").symlink_to(outside / target)
        answer = switch(client, root / target)
        assert answer.status_code == 403, answer.text
        said.append(answer.json()["error"].replace(target, "X"))
    assert said[0] == said[1] == said[2] and "hunter2" not in said[0]
    # optimise's verdict under the roots: that it is one, not what it says (a file on the server, not the page's)
    kept = root / "kept"
    kept.mkdir()
    (kept / "gate.json").write_text(json.dumps({"promoted": False, "reason": "not promoted: DB_PASSWORD=hunter2"}))
    answer = switch(client, kept)
    assert answer.status_code == 404
    assert answer.json()["error"] == f"{kept} holds no model: optimise did not promote its model (gate.json says why)"
    # a gate.json of 256 MB (sparse: no disk) or a pipe is no verdict, said at once: read no further than 64 KB
    with open(kept / "gate.json", "wb") as f:
        f.truncate(256 << 20)
    os.mkfifo(root / "kept-pipe.json")
    for gate in (kept / "gate.json", root / "kept-pipe.json"):
        if gate.name != "gate.json":
            (kept / "gate.json").unlink()
            (kept / "gate.json").symlink_to(gate)
        answer = switch(client, kept)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == (f"{kept} holds no model: {kept / 'gate.json'} is not optimise's verdict "
                                          "(rerun dvc repro optimise)")  # fmt: skip


def test_a_file_swapped_for_a_link_out_after_the_check_never_reaches_the_load(page, monkeypatch):
    """The race of a writer under the roots: labels.txt replaced by a link to a file outside between the check of
    the names and the load (taken here every time, not one load in three hundred). The load reads only the files it
    opened, checked where they really are, so the outside file's lines never become the card's class names."""
    from imgclf.deploy import model_card

    client, root, outside = page
    model = plain(root / "m")
    (outside / "secret.txt").write_text("DB_PASSWORD\nhunter2\n")
    checked = model_card._check_model_files

    def then_swapped(path, roots):
        checked(path, roots)
        (model / "labels.txt").unlink()
        (model / "labels.txt").symlink_to(outside / "secret.txt")

    monkeypatch.setattr(model_card, "_check_model_files", then_swapped)
    answer = switch(client, model)
    assert answer.status_code == 403 and "hunter2" not in answer.text, answer.text
    assert answer.json()["error"].startswith(f"{model / 'labels.txt'} is outside the allowed roots")
    assert client.get("/api/model").json()["classes"] == ["a", "b", "c"]  # still the model it served


def test_a_pipe_where_a_model_file_goes_is_refused_before_any_runtime_opens_it(page, trained_project, tmp_path):
    """OpenVINO opened model.bin, a pipe, and waited for ever, in serve's switch and in predict."""
    client, root, _ = page
    model = as_ir(plain(tmp_path / "onnx"), root / "ir")
    (model / "model.bin").unlink()
    os.mkfifo(model / "model.bin")
    refused = f"{model / 'model.bin'}: not a regular file (a pipe or a device); a model is read from the files export "
    try:
        answer = switch(client, model)
        assert answer.status_code == 400 and answer.json()["error"] == refused + "writes"
        said = within(WAIT, lambda: console(predict, [an_image(trained_project), "--model", str(model)], tmp_path))
        assert said.returncode == 1 and said.stderr == f"error: {refused}writes\n" and not said.stdout
    finally:
        release(model / "model.bin")


def test_a_model_that_runs_past_the_inference_timeout_is_stopped_and_its_slot_freed(page, trained_project):
    """A 500-byte ONNX Loop of 4e18 iterations ran for ever, holding the switch's lock and a slot: now its load's
    check is stopped at --inference-timeout (0.5 s here), and a model that loops only on real images answers each
    request 503, its one slot free for the next."""
    client, root, _ = page
    answer = switch(client, looping(root / "loop"))
    assert answer.status_code == 400
    assert answer.json()["error"] == (f"{root / 'loop'}: refused: the model ran for more than 0.5 s on a batch of 2 "
                                      "images and was stopped (--inference-timeout)")  # fmt: skip
    assert switch(client, looping(root / "later", on_images=True)).status_code == 200  # blank images: no loop
    image = open(an_image(trained_project), "rb").read()
    for _ in range(2):  # one slot: a second request gets it only once the first's run was stopped
        answer = within(WAIT, lambda: client.post("/api/classify", files=[("files", ("a.png", image))]))
        assert answer.status_code == 503 and answer.json()["error"] == (
            "the model ran for more than 0.5 s on a batch of 1 image and was stopped (--inference-timeout)"
        )
    assert switch(client, plain(root / "plain")).status_code == 200
    assert within(WAIT, lambda: client.post("/api/classify", files=[("files", ("a.png", image))])).status_code == 200


def test_predict_stops_a_run_past_its_inference_timeout_in_one_line_and_writes_nothing(trained_project, tmp_path):
    image = an_image(trained_project)
    for model, says in (
        (looping(tmp_path / "loop"), f"{tmp_path / 'loop'}: refused: the model ran for more than 0.5 s on a batch "
                                     "of 2 images"),
        (looping(tmp_path / "later", on_images=True), "the model ran for more than 0.5 s on a batch of 1 image"),
    ):  # fmt: skip
        args = [image, "--model", str(model), "--inference-timeout", "0.5", "--out", "out.csv"]
        said = within(WAIT, lambda args=args: console(predict, args, tmp_path))
        assert said.returncode == 1 and not said.stdout
        assert said.stderr == f"error: {says} and was stopped (--inference-timeout)\n"
        assert not (tmp_path / "out.csv").exists()
    said = console(predict, [image, "--model", str(model), "--inference-timeout", "0"], tmp_path)
    assert said.returncode == 2 and "argument --inference-timeout: '0' is not valid: a number of seconds above 0" in (
        said.stderr
    )


def test_an_openvino_model_that_loops_is_refused_before_it_is_compiled(page, tmp_path):
    """OpenVINO's cancel stops a request between operations, not inside a Loop, and it constant-folds a Loop of
    fixed length while compiling: a loop is refused before either."""
    client, root, _ = page
    model = as_ir(looping(tmp_path / "onnx"), root / "ir")
    answer = switch(client, model)
    assert answer.status_code == 400 and answer.json()["error"] == (
        f"{model / 'model.xml'}: refused: it holds control flow (Loop), and OpenVINO can stop no loop once it runs; "
        "an exported classifier has none"
    )


def test_openvino_refusals_say_what_was_wrong(trained_project, tmp_path):
    """The line OpenVINO's message ends with (its first ones name its own source files), and an ONNX file named
    model.xml is not read by OpenVINO's ONNX reader."""
    image = an_image(trained_project)
    ir = as_ir(plain(tmp_path / "onnx"), tmp_path / "ir")
    (ir / "model.bin").write_bytes((ir / "model.bin").read_bytes()[:3])
    said = console(predict, [image, "--model", str(ir)], tmp_path)
    assert said.returncode == 1 and said.stderr == (
        f"error: {ir / 'model.xml'}: not a model this runtime can load (Incorrect weights in bin file!)\n"
    )
    named = write_contract(tmp_path / "named")
    shutil.copyfile(tmp_path / "onnx/model.onnx", named / "model.xml")
    said = console(predict, [image, "--model", str(named)], tmp_path)
    assert said.returncode == 1 and said.stderr == (
        f"error: {named / 'model.xml'}: not an OpenVINO IR (an XML file whose element is <net>, model.bin beside it)\n"
    )


def test_serve_ends_on_sigterm_while_a_request_is_stuck_in_a_run_and_removes_its_folder(tmp_path, project_env):
    """A run that does not end (a model switched to, checked for up to --inference-timeout 600 s) kept `imgclf
    serve` from ending: two SIGTERMs were ignored. It waits for its requests a few seconds, then cancels them, ends as
    SIGTERM ends a process, its temporary folder removed, and says so in one line, not a traceback."""
    import contextlib
    import signal
    import subprocess
    import threading
    import time
    import urllib.request

    from imgclf.tracking.server import free_port

    from ..conftest import BIN

    plain(tmp_path / "models/export")
    looping(tmp_path / "models/loop")
    (tmp_path / "models/run.json").write_text("{}")  # models/ is the home: the page may switch to models/loop
    port, tmp = free_port(), tmp_path / "tmp"
    tmp.mkdir()
    cmd = [str(BIN / "imgclf"), "serve", "--model", "models/export", "--port", str(port), "--inference-timeout", "600"]
    env = dict(project_env, TMPDIR=str(tmp))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/api/model"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
                time.sleep(0.3)
        body = json.dumps({"model": "models/loop"}).encode()
        stuck = urllib.request.Request(url, body, {"content-type": "application/json"})

        def ask():
            with contextlib.suppress(OSError):  # cut off when serve stops: the answer is not what is tested
                urllib.request.urlopen(stuck, timeout=120)

        threading.Thread(target=ask, daemon=True).start()
        time.sleep(2)  # the switch's check is running the loop
        proc.terminate()
        started = time.time()
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert time.time() - started < 15 and not list(tmp.glob("imgclf-*"))
        said = proc.stdout.read()
        assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in said and "Traceback" not in said, said
    finally:
        proc.kill()
        proc.wait()
