"""imgclf predict: Classify One/Many with the exported model, same preprocessing as evaluation."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from imgclf.deploy.inputs import collect_inputs
from imgclf.deploy.predict import Classifier
from imgclf.errors import BadInput

from ..conftest import BIN, console, copy_of


@pytest.fixture(scope="module")
def trained(trained_project, tmp_path_factory):
    """The session's tiny project trained, evaluated and exported, copied once for every test here (they write
    lists, outputs and a broken image into it)."""
    return copy_of(trained_project, tmp_path_factory.mktemp("predict") / "project")


def cli(args, cwd, env, process=False):
    """`imgclf predict ARGS`: its function in this process, or with `process` the installed script."""
    if process:
        return subprocess.run(
            [str(BIN / "imgclf"), "predict", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
    from imgclf.cli import predict

    return console(predict, args, cwd)


def test_predict_matches_evaluation_for_onnx_and_checkpoint(trained):
    rows = list(csv.DictReader(open(trained / "reports/evaluate/predictions.csv")))
    paths = [trained / "data/tiny/images" / r["path"] for r in rows]
    for model in ("models/export", "models/model.pt", "models/export/model.onnx", "models/export/model.pt2"):
        preds = Classifier(trained / model).classify(paths, batch_size=5)  # batches of 5: a partial last batch too
        for row, pred in zip(rows, preds):
            assert pred.path.endswith(row["path"])
            np.testing.assert_allclose(pred.probs, [float(row[f"p_{c}"]) for c in "abc"], atol=1e-4)
            if row["actual"] == row["predicted"]:  # a known image the model classifies right: predict says so too
                assert "abc"[int(pred.probs.argmax())] == row["actual"]
        # --tta: the views evaluate averaged (the preset's four corner crops), the same result
        for row, pred in zip(rows, Classifier(trained / model).classify(paths, batch_size=5, tta=True)):
            np.testing.assert_allclose(pred.probs, [float(row[f"tta_{c}"]) for c in "abc"], atol=1e-4)
    assert sum(r["actual"] == r["predicted"] for r in rows) >= 6  # 3 epochs on well-separated colours
    metrics = json.loads((trained / "reports/evaluate/metrics.json").read_text())
    tta_correct = [max("abc", key=lambda c: float(r[f"tta_{c}"])) == r["actual"] for r in rows]
    assert metrics["test_tta/acc"] == pytest.approx(np.mean(tta_correct))  # reported beside test/acc


def test_cli_classify_one_and_many(trained, project_env):
    image = next((trained / "data/tiny/images/b").iterdir())
    one = cli([str(image), "--top-k", "5"], trained, project_env, process=True)
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 4  # k capped at the 3 classes
    probs = Classifier(trained / "models/export").classify([image])[0].probs
    shown = [(line.split()[1], float(line.split()[2].rstrip("%")) / 100) for line in lines[1:]]
    assert [name for name, _ in shown] == ["abc"[i] for i in np.argsort(-probs)]  # ranked as the model ranks them
    assert [p for _, p in shown] == pytest.approx(sorted(probs, reverse=True), abs=6e-5)  # printed to 0.01%
    tta = cli([str(image), "--tta", "--top-k", "1"], trained, project_env)
    tta_probs = Classifier(trained / "models/export").classify([image], tta=True)[0].probs
    assert tta.returncode == 0 and tta.stdout.split()[2] == "abc"[int(tta_probs.argmax())]
    spec = json.loads((trained / "models/export/preprocessing.json").read_text())
    assert spec["tta"] == ["crops"]  # the digit preset's views (the default data set's), kept with the model

    (trained / "list.txt").write_text(f"{image}\n{trained / 'missing.png'}\n")
    (trained / "data/tiny/images/a/broken.png").write_bytes(b"not a png")
    many = cli(["data/tiny/images/a", "list.txt", "--out", "preds.json"], trained, project_env)
    assert many.returncode == 0
    assert "missing.png: no such file" in many.stderr and "broken.png: not a readable image" in many.stderr
    out = json.loads((trained / "preds.json").read_text())
    assert len(out) == 20 + 1 + 2 and sum("error" in r for r in out) == 2
    good = [r for r in out if "probs" in r]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 for r in good)


def test_the_request_printed_for_mlflow_models_serve_works_as_copied(trained, project_env, tmp_path):
    """docs/how-to/deploy.md's three commands, as a user copies them: the request file, `mlflow models serve` of the
    registered model, and curl's POST of the file (here urllib's)."""
    import socket
    import time
    import urllib.request

    images = sorted((trained / "data/tiny/images/c").iterdir())[:3]
    made = cli([*map(str, images), "--request", str(tmp_path / "request.json")], trained, project_env)
    assert made.returncode == 0 and made.stdout.strip() == f"wrote a request of 3 images to {tmp_path / 'request.json'}"
    body = json.loads((tmp_path / "request.json").read_text())
    assert np.array(body["inputs"]).shape == (3, 32, 32, 3)  # the model's size, RGB, HWC
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(project_env, MLFLOW_TRACKING_URI=f"sqlite:///{trained}/mlflow.db")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/imgclf-tiny/1", "--env-manager", "local", "-p",
         str(port), "-h", "127.0.0.1"],
        cwd=trained, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.communicate()[1][-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=(tmp_path / "request.json").read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = Classifier(trained / "models/export").classify(images)
    assert [row["label"] for row in answer["predictions"]] == ["abc"[int(p.probs.argmax())] for p in served]
    assert [row["c"] for row in answer["predictions"]] == pytest.approx([float(p.probs[2]) for p in served], abs=1e-4)
    bad = cli([str(trained / "nothing.png"), "--request", str(tmp_path / "r2.json")], trained, project_env)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: {trained / 'nothing.png'}: no such file"
    assert not (tmp_path / "r2.json").exists()


def test_a_file_name_that_is_not_utf8_is_classified_and_written_as_its_own_bytes(trained, project_env, tmp_path):
    import os

    folder = tmp_path / "odd"
    folder.mkdir()
    image = next((trained / "data/tiny/images/b").iterdir())
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # a Latin-1 name, as old cameras and Windows shares write them
    open(odd, "wb").write(image.read_bytes())
    done = cli([str(folder), "--out", "odd.csv"], trained, project_env)
    assert done.returncode == 0, done.stderr
    rows = (trained / "odd.csv").read_bytes().splitlines()
    assert len(rows) == 2 and rows[1].startswith(odd + b",") and rows[1].split(b",")[1] in (b"a", b"b", b"c")
    (folder / "two\nlines.png").write_bytes(image.read_bytes())  # the table shows it quoted, on one line
    table = cli([str(folder / "two\nlines.png"), "--top-k", "1"], trained, project_env).stdout.splitlines()
    assert len(table) == 2 and table[0] == repr(str(folder / "two\nlines.png"))


def test_a_pipe_among_the_inputs_is_named_and_never_waited_on(trained, project_env, tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opened as a file, it would wait for a writer for ever
    image = trained / "data/tiny/images/a/000.png"
    done = cli([str(tmp_path / "pipe.png"), str(image)], trained, project_env)
    assert done.returncode == 0 and done.stdout.startswith(str(image))
    assert f"error: {tmp_path / 'pipe.png'}: not a regular file (a pipe or a device)\n" in done.stderr


def test_a_file_of_a_format_that_is_no_photo_is_not_decoded_and_runs_no_program(
    trained, project_env, tmp_path, monkeypatch
):
    """PIL opens EPS by its content, whatever the name, by running Ghostscript on it: not an image here, and the
    rest of the batch is classified. A `gs` on PATH records whether it ran."""
    from imgclf.data.folder import inspect_image

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/gs").write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\necho 10.0\n")
    (tmp_path / "bin/gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{project_env['PATH']}")
    eps = tmp_path / "drawing.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n")
    image = trained / "data/tiny/images/a/000.png"
    done = cli([str(eps), str(image)], trained, project_env)
    assert done.returncode == 0 and done.stdout.startswith(str(image))
    assert f"error: {eps}: not a readable image" in done.stderr
    assert inspect_image(eps) == ("not an image", None)  # and split leaves it out
    assert not (tmp_path / "ran").exists()


def test_nothing_classifiable_is_exit_1_and_no_file(trained, project_env, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    done = cli([str(tmp_path / "notes.png"), "--out", "none.csv"], trained, project_env)
    assert done.returncode == 1 and "notes.png: not a readable image" in done.stderr
    assert not (trained / "none.csv").exists()  # a file of error rows alone is nothing the user asked for


def test_no_images_to_classify_is_one_line_and_no_file(trained, project_env, tmp_path):
    """An empty folder, one of notes only, an empty list: exit 1 naming what was given, nothing written (it was exit 0
    and silence, a header-only submission, or a traceback for --request)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.md").write_text("no images here")
    (tmp_path / "list.txt").write_text("")
    for given in ("empty", "notes", "list.txt"):
        for out in ([], ["--out", "o.csv"], ["--request", "r.json"], ["--submission", "s.csv", "--positive", "a"]):
            done = cli([str(tmp_path / given), *out], trained, project_env)
            assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
            says = f"error: no images in {tmp_path / given}: give image files, a folder of them or a .txt list\n"
            assert done.stderr == says
    assert not [name for name in ("o.csv", "r.json", "s.csv") if (trained / name).exists()]


def test_kaggle_submission_rows_in_id_order(trained, project_env):
    unlabelled = trained / "test1"
    unlabelled.mkdir()
    for i in (10, 2, 1):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(unlabelled / f"{i}.jpg")
    proc = cli([str(unlabelled), "--submission", "sub.csv", "--positive", "b", "--clip", "0.05"], trained, project_env)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(open(trained / "sub.csv")))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == ["1", "2", "10"]
    probs = Classifier(trained / "models/export").classify([unlabelled / f"{i}.jpg" for i in (1, 2, 10)])
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(
        [min(max(p.probs[1], 0.05), 0.95) for p in probs], abs=1e-6
    )  # p(b), clipped
    bad = cli([str(unlabelled), "--submission", "sub.csv", "--positive", "dog", "--force"], trained, project_env)
    assert (
        bad.returncode == 1
        and bad.stderr.strip() == "error: --positive 'dog' is not a class of this model; choose one of: a, b, c"
    )


def test_collect_inputs_expands_folders_and_lists(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.png", "d/sub/y.JPG", "d/notes.md", "d/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "l.txt").write_text(f"{tmp_path / 'd/x.png'}\n\nb.png\n")  # a missing one is reported per file
    got = collect_inputs([str(tmp_path / "d"), str(tmp_path / "l.txt"), "c.png"])
    assert [p.name for p in got] == ["y.JPG", "x.png", "x.png", "b.png", "c.png"]
    # a text file of notes is no list of images: one line naming it, not "notes: no such file" per line
    (tmp_path / "notes.txt").write_text("not an image\njust notes\n")
    with pytest.raises(BadInput, match=r"notes.txt: a .txt file is read as a list of image paths, one per line, "
                       r"and none of its 2 lines names a file \(line 1: 'not an image'\)"):  # fmt: skip
        collect_inputs([str(tmp_path / "notes.txt")])


def test_missing_export_is_one_clear_error(tmp_path, project_env):
    proc = cli(["x.png"], tmp_path, project_env)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no exported model at models/export/model.onnx; run the pipeline")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "optimised").mkdir()
    (tmp_path / "optimised" / "gate.json").write_text("{not json")  # not optimise's: one line, not a traceback
    kinds = ".engine, .onnx, .plan, .pt, .pt2, .xml"
    for model, says in (
        ("labels.txt", f"labels.txt is not a model: give its folder, or a file ending in {kinds}"),
        (
            "optimised",
            "optimised holds no model: optimised/gate.json is not optimise's verdict (rerun dvc repro optimise)",
        ),
    ):
        proc = cli(["x.png", "--model", model], tmp_path, project_env)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: {says}", proc.stderr


@pytest.mark.parametrize(
    ("file", "change", "says"),
    [
        ("preprocessing.json", {"std": [0, 0, 0]}, "std=[0, 0, 0] is not valid: 3 numbers from 1e-06 to 1"),
        ("preprocessing.json", {"resize_size": 60000}, "resize_size=60000 is not valid: null or an integer from"),
        ("preprocessing.json", {"image_size": "abc"}, "image_size='abc' is not valid: an integer from 1 to 1024"),
        ("preprocessing.json", "{not json", "preprocessing.json: not valid JSON"),
        ("labels.txt", "a\nb\n", "the model has 3 outputs but labels.txt names 2 classes"),
        ("labels.txt", "a\nb\nc\nd\n", "the model has 3 outputs but labels.txt names 4 classes"),
        ("labels.txt", "", "labels.txt: 0 class names; one per line, at least 2"),
        ("labels.txt", "a\na\nb\n", "3 class names, 2 distinct"),
    ],
)
def test_a_model_whose_contract_is_wrong_is_refused_in_one_line(trained, tmp_path, project_env, file, change, says):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained / "models/export", model)
    (model / "run.json").unlink()  # a model folder made by hand: no record of its files, each check below refuses it
    if isinstance(change, dict):
        spec = json.loads((model / file).read_text())
        (model / file).write_text(json.dumps({**spec, **change}))
    else:
        (model / file).write_text(change)
    image = next((trained / "data/tiny/images/a").iterdir())
    proc = cli([str(image), "--model", str(model)], trained, project_env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert says in proc.stderr, proc.stderr


def test_explain_writes_a_grad_cam_overlay_per_image_and_never_replaces_a_file(trained, project_env, tmp_path):
    images = [trained / f"data/tiny/images/{c}/000.png" for c in "ab"]  # one name twice: two overlays
    out = tmp_path / "cams"
    done = cli([*map(str, images), "--explain", str(out)], trained, project_env)
    assert done.returncode == 0, done.stderr
    assert f"wrote 2 Grad-CAM overlays to {out}" in done.stdout
    drawn = sorted(out.iterdir())
    assert [p.name for p in drawn] == ["000.1.cam.png", "000.cam.png"]
    with Image.open(drawn[0]) as overlay, Image.open(images[0]) as original:
        assert overlay.size[0] >= 224 and overlay.mode == "RGB"
        assert overlay.size != original.size  # drawn at the model's view, big enough to see
    before = drawn[0].read_bytes()
    again = cli([str(images[0]), "--explain", str(out)], trained, project_env, process=True)  # its own stderr
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already there" in again.stderr
    assert drawn[0].read_bytes() == before
    wrong = cli([str(images[0]), "--explain", str(tmp_path / "c2"), "--explain-layer", "nope"], trained, project_env)
    assert wrong.returncode == 1 and "--explain-layer nope is not a layer" in wrong.stderr
    # a layer without a map of positions (the head, the global pooling): one line before any image, not a traceback
    for layer in ("fc", "global_pool"):
        flat = cli([str(images[0]), "--explain", str(tmp_path / "c3"), "--explain-layer", layer], trained, project_env)
        said = flat.stderr.strip().splitlines()  # in this process, an earlier in-process stage's log handlers may
        assert flat.returncode == 1 and "not a feature map" in said[-1], flat.stderr  # add lines of their own
        assert said[-1].startswith(f"error: --explain-layer {layer} gives (1, ") and "Error(s)" not in flat.stderr
    blank = cli(["", "--out", str(tmp_path / "all.csv")], trained, project_env)  # it classified the working folder
    assert (blank.returncode, blank.stderr) == (1, "error: an input was given as '': give image files, a folder of "
                                                   "them or a .txt list\n")  # fmt: skip
    for flag in ("--explain", "--out", "--explain-layer"):  # an empty name was taken as none given, silently
        empty = cli([str(images[0]), flag, ""], trained, project_env)
        assert (empty.returncode, empty.stderr) == (1, f"error: {flag} was given an empty name: give a path (or "
                                                       f"leave {flag} out)\n")  # fmt: skip
    assert not (tmp_path / "c3").exists()
    for name in ("out.txt", "out", "out.csv.png"):  # a CSV written into a name predict reads as a list, or none
        done = cli([str(images[0]), "--out", str(tmp_path / name)], trained, project_env)
        assert (done.returncode, done.stderr) == (1, f"error: --out {str(tmp_path / name)!r}: give a .csv or a .json "
                                                     "file (its suffix picks the format)\n")  # fmt: skip
        assert not (tmp_path / name).exists()


def test_overlays_never_go_among_what_predict_reads(trained, project_env, tmp_path):
    """An overlay in a class folder is a training image at the next split; in models/export, a change to a DVC
    output: --explain is refused in the model's folder, an image's own folder and a folder given to classify."""
    image = trained / "data/tiny/images/a/000.png"
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    for inputs, folder, says in (
        ([image], image.parent, f"is {image.parent}, which this command reads"),
        ([image], trained / "models/export", "which this command reads"),
        ([trained / "data/tiny/images"], trained / "data/tiny/images/cams", "which this command reads"),
    ):
        done = cli([*map(str, inputs), "--explain", str(folder)], trained, project_env)
        assert done.returncode == 1 and says in done.stderr and "nothing was written" in done.stderr, done.stderr
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before
    shutil.copy(image, tmp_path / "photo.png")  # an image beside the folder of overlays: the usual way, kept
    done = cli([str(tmp_path / "photo.png"), "--explain", str(tmp_path / "cams")], trained, project_env)
    assert done.returncode == 0 and (tmp_path / "cams/photo.cam.png").is_file(), done.stderr


def test_a_pipe_a_socket_a_device_or_a_link_to_one_is_never_replaced_even_with_force(trained, project_env, tmp_path):
    """--force replaces an earlier output: a file. Replaced, /dev/null (as root) or a pipe would be a plain file."""
    import os
    import socket

    image = str(trained / "data/tiny/images/a/000.png")
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "null.csv").symlink_to(os.devnull)
    (tmp_path / "to_pipe.csv").symlink_to(tmp_path / "pipe.csv")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.csv"))
        for name, kind in (("pipe.csv", "a pipe"), ("sock.csv", "a socket"), ("null.csv", "a device"),
                           ("to_pipe.csv", "a pipe")):  # fmt: skip
            for flag in ("--out", "--request"):
                done = cli([image, flag, str(tmp_path / name), "--force"], trained, project_env)
                assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
                assert f"error: {tmp_path / name} is {kind}, not a file; only a file is replaced" in done.stderr
        assert (tmp_path / "sock.csv").is_socket() and (tmp_path / "pipe.csv").is_fifo()
    assert (tmp_path / "null.csv").is_symlink() and (tmp_path / "to_pipe.csv").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.csv", "pipe.csv", "sock.csv", "to_pipe.csv"]


def test_an_output_already_there_is_replaced_only_with_force_and_never_a_file_the_command_reads(
    trained, project_env, tmp_path
):
    image = tmp_path / "victim.png"
    image.write_bytes((trained / "data/tiny/images/a/000.png").read_bytes())
    before = image.read_bytes()
    labels = trained / "models/export/labels.txt"
    kept = labels.read_bytes()
    for args, says in (
        (["--out", str(image)], f"error: --out {image} is already there; give another name, or add --force"),
        (["--out", str(image), "--force"], f"error: --out {image} is {image}, which this command reads"),
        (["--submission", str(image), "--force"], f"error: --submission {image} is {image}, which this command reads"),
        (["--out", str(labels), "--force"], f"error: --out {labels} is in {labels.parent}, which this command reads"),
        (["--out", "models/export/new.csv"], "error: --out models/export/new.csv is in "),
        (["--model", str(labels.parent / "model.onnx"), "--request", str(labels), "--force"], f"is {labels}, which"),
        (
            ["--model", str(labels.parent / "model.onnx"), "--out", str(labels.parent / "model.pt2"), "--force"],
            f"is {labels.parent / 'model.pt2'}, which this command reads",
        ),
        (["--out", "new.csv", "--submission", "new.csv"], "--out and --submission were given: give one of --out, "),
    ):
        done = cli([str(image), *args], trained, project_env)
        assert done.returncode == 1 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert image.read_bytes() == before and labels.read_bytes() == kept
    assert not (trained / "models/export/new.csv").exists()

    earlier = tmp_path / "preds.csv"  # an earlier output: replaced when the user says so
    earlier.write_text("my notes\n")
    assert cli([str(image), "--out", str(earlier)], trained, project_env).returncode == 1
    assert earlier.read_text() == "my notes\n"
    assert cli([str(image), "--out", str(earlier), "--force"], trained, project_env).returncode == 0
    assert earlier.read_text().startswith("path,top1,")

    # a refused --explain leaves --out unwritten: every output is checked before the first is written
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "victim.cam.png").write_bytes(b"mine")
    table = tmp_path / "new.csv"
    done = cli([str(image), "--out", str(table), "--explain", str(tmp_path / "cams")], trained, project_env)
    assert done.returncode == 1 and "already there" in done.stderr and not table.exists()
    assert (tmp_path / "cams" / "victim.cam.png").read_bytes() == b"mine"
    # a folder that cannot be made was found only after --out was written
    done = cli([str(image), "--out", str(table), "--explain", str(earlier / "cams")], trained, project_env)
    assert (done.returncode, done.stderr) == (
        1,
        f"error: --explain {earlier / 'cams'} cannot be made: {earlier} is a file; nothing was written\n",
    )
    assert not table.exists()


@pytest.mark.parametrize(
    "option, value, valid",
    [("--clip", "0.7", "a number >= 0 and < 0.5"), ("--clip", "-1", "a number >= 0 and < 0.5"),
     ("--top-k", "0", "an integer >= 1"), ("--batch-size", "-5", "an integer >= 1")],
)  # fmt: skip
def test_an_option_out_of_its_range_is_one_line_and_exit_2(trained, project_env, option, value, valid):
    done = cli(["data/tiny/images/a", option, value], trained, project_env)
    assert done.returncode == 2 and f"argument {option}: '{value}' is not valid: {valid}" in done.stderr


def test_predict_stopped_by_ctrl_c_or_sigterm_is_one_line_and_takes_back_what_it_wrote(
    trained, tmp_path, monkeypatch, capsys
):
    """Ctrl-C was a traceback; SIGTERM ended predict with half the overlays and the table written, and the same
    command then refused them as already there."""
    import os
    import signal
    import sys

    from imgclf import cli
    from imgclf.deploy import predict as module
    from imgclf.deploy.explain import Explainer

    before = signal.getsignal(signal.SIGTERM)
    images = [str(trained / f"data/tiny/images/a/00{i}.png") for i in range(3)]
    table, cams = tmp_path / "out" / "table.csv", tmp_path / "cams"
    drawn = Explainer.overlay

    def sigterm_at_the_second(self, *args):
        if len(list(cams.glob("*.png"))) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return drawn(self, *args)

    def ctrl_c(*args):
        raise KeyboardInterrupt

    for patch, said, status in (
        ((Explainer, "overlay", sigterm_at_the_second), "stopped by SIGTERM\n", 143),
        ((module, "write_table", ctrl_c), "stopped by Ctrl-C\n", 130),  # the overlays all written by then
    ):
        with monkeypatch.context() as m:
            m.setattr(*patch)
            models = ["--model", str(trained / "models/export"), "--explain-model", str(trained / "models/model.pt")]
            m.setattr(sys, "argv", ["imgclf", "predict", *images, *models, "--out", str(table), "--explain", str(cams)])
            with pytest.raises(SystemExit) as stopped:
                cli.main()
        err = capsys.readouterr().err
        assert stopped.value.code == status and err == said, err
        assert list(tmp_path.iterdir()) == []  # no overlay, no table, no folder made for them
    assert signal.getsignal(signal.SIGTERM) is before  # predict's own handler goes with it


def test_explain_gives_each_image_its_own_overlay_whatever_the_names(trained, project_env, tmp_path):
    """x.2.png, then two x.png: the second x.png was named x.2.cam.png too, and its overlay replaced the first's."""
    source = (trained / "data/tiny/images/a/000.png").read_bytes()
    images = [tmp_path / "x.2.png", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for image in images:
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(source)
    done = cli([*map(str, images), "--explain", str(tmp_path / "cams")], trained, project_env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["x.1.cam.png", "x.2.cam.png", "x.cam.png"]


def _retrained(trained, dest):
    """models/model.pt retrained without re-export: the same classes, other weights, in a models/ of its own."""
    import torch

    from imgclf.models.saved import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained / "models/model.pt")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in ckpt.pop("model").items()}
    dest.mkdir(parents=True)
    save_checkpoint(dest / "model.pt", state, **ckpt)
    (dest / "run.json").write_text(json.dumps({"run_id": "b" * 32}))
    assert torch.load(dest / "model.pt", weights_only=True)["class_names"] == ckpt["class_names"]
    return dest / "model.pt"


def test_explain_refuses_a_checkpoint_the_model_was_not_exported_from(trained, project_env, tmp_path):
    image = str(trained / "data/tiny/images/a/000.png")
    other = _retrained(trained, tmp_path / "b")
    out = tmp_path / "cams"
    wrong = cli([image, "--explain", str(out), "--explain-model", str(other), "--out", str(tmp_path / "o.csv")],
                trained, project_env)  # fmt: skip
    said = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 1 and len(said) == 1, wrong.stderr
    assert f"{other} is not the checkpoint models/export was made from" in said[0]
    assert f"run {'b' * 32}'s" in said[0] and "re-export" in said[0] and "--explain-model" in said[0]
    assert not out.exists() and not (tmp_path / "o.csv").exists()
    # the checkpoint itself, as the model: its own network explains it
    right = cli([image, "--model", str(other), "--explain", str(out), "--explain-model", str(other)], trained,
                project_env)  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert (trained / "models/export/run.json").is_file() and len(list(out.iterdir())) == 1


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["1.png", "01.png", "1.jpg"], "01.png and {d}/1.jpg are both id 1"),  # files sorted: 01.png comes first
        (["².png", "2.png"], "².png: file name is not a numeric Kaggle id (digits 0-9)"),
    ],
)
def test_a_submission_refuses_two_images_of_one_id_and_a_name_that_is_no_id(
    trained, project_env, tmp_path, names, says
):
    for name in names:
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / name, format="PNG")
    sub = tmp_path / "sub.csv"
    proc = cli([str(tmp_path), "--submission", str(sub), "--positive", "b"], trained, project_env)
    said = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(said) == 1 and said[0].startswith("error: "), proc.stderr
    assert says.format(d=tmp_path) in said[0] and "no submission written" in said[0]
    assert not sub.exists()


def test_every_output_is_its_own_file_and_named_before_anything_is_written(trained, project_env, tmp_path):
    """--out where an overlay goes, --out where the overlays' folder goes, a name too long for the system: refused
    in one line, and nothing written."""
    source = (trained / "data/tiny/images/a/000.png").read_bytes()
    (tmp_path / "a.png").write_bytes(source)
    cams = tmp_path / "cams"
    for out, explain in ((cams / "a.cam.png", cams), (cams, cams)):
        proc = cli([str(tmp_path / "a.png"), "--out", str(out), "--explain", str(explain)], trained, project_env)
        said = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(said) == 1 and "clashes with --out" in said[0], proc.stderr
        assert "Traceback" not in proc.stderr and not cams.exists()
    long = tmp_path / ("x" * 246 + ".png")  # 250 bytes: itself a name, but its overlay's temporary twin is not
    long.write_bytes(source)
    out = tmp_path / "o.csv"
    proc = cli([str(tmp_path / "a.png"), str(long), "--out", str(out), "--explain", str(cams)], trained, project_env)
    said = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(said) == 1 and "at most 255 bytes" in said[0], proc.stderr
    assert not out.exists() and not cams.exists()


def test_explain_leaves_no_empty_folder_and_is_refused_with_request(trained, project_env, tmp_path):
    (tmp_path / "notimg.png").write_bytes(b"not a png")
    cams = tmp_path / "d" / "cams"
    proc = cli([str(tmp_path / "notimg.png"), "--explain", str(cams)], trained, project_env)
    assert proc.returncode == 1 and "not a readable image" in proc.stderr
    assert not (tmp_path / "d").exists()
    image = str(trained / "data/tiny/images/a/000.png")
    both = cli([image, "--request", str(tmp_path / "r.json"), "--explain", str(cams)], trained, project_env)
    assert (both.returncode, both.stderr.count("\n")) == (1, 1) and "--request and --explain" in both.stderr
    assert not (tmp_path / "r.json").exists()


def test_an_export_older_than_the_trained_model_is_said_by_predict_and_on_serves_card(trained_project, tmp_path):
    """`dvc repro train` alone, then `imgclf predict` or `imgclf serve` on models/export: another run's model was
    served, and nothing said so."""
    from imgclf.cli import predict

    from ..conftest import serve_client

    project = copy_of(trained_project, tmp_path / "project")
    image = str(project / "data/tiny/images/a/000.png")
    done = console(predict, ["--model", "models/export", image], project)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    record = project / "models/run.json"
    exported = json.loads(record.read_text())["run_id"]
    record.write_text(json.dumps({**json.loads(record.read_text()), "run_id": "f" * 32}))  # trained since
    done = console(predict, ["--model", "models/export", image], project)
    said = f"models/export holds run {exported}'s model, models/model.pt run {'f' * 32}'s: dvc repro brings it up"
    assert done.returncode == 0 and done.stderr.startswith(f"warning: {said}"), done.stderr
    card = serve_client(project, tmp_path / "cache", [project]).get("/api/model").json()
    assert card["note"].startswith(f"{project / 'models/export'} holds run {exported}'s model"), card
    # the same run trained further (trainer.resume keeps the run): the checkpoint's sha256 tells them apart
    import torch

    record.write_text(json.dumps({**json.loads(record.read_text()), "run_id": exported}))
    checkpoint = torch.load(project / "models/model.pt", weights_only=False)
    checkpoint["epoch"] += 1
    torch.save(checkpoint, project / "models/model.pt")
    done = console(predict, ["--model", "models/export", image], project)
    said = f"warning: models/export was exported from run {exported}'s model.pt before models/model.pt was trained"
    assert done.returncode == 0 and done.stderr.startswith(said), done.stderr


def test_a_file_of_the_export_edited_or_replaced_since_is_refused_not_served(trained_project, tmp_path):
    """Nothing tied labels.txt, preprocessing.json or model.onnx to the export: labels.txt reordered by hand gave
    every image another class's name, and another network copied over model.onnx was served, with exit 0."""
    from imgclf.cli import predict

    project = copy_of(trained_project, tmp_path / "project")
    image = str(project / "data/tiny/images/a/000.png")
    export = project / "models/export"
    files = json.loads((export / "run.json").read_text())["files"]
    assert sorted(files) == ["labels.txt", "model.onnx", "model.pt2", "preprocessing.json"]
    for name, edit in (("labels.txt", "c\nb\na\n"), ("preprocessing.json", None), ("model.onnx", None)):
        path, kept = export / name, (export / name).read_bytes()
        path.chmod(0o644)
        path.write_bytes(edit.encode() if edit else kept.replace(b'"mean"', b'"mean" ') if name.endswith("json")
                         else kept + b"\0")  # fmt: skip
        done = console(predict, ["--model", "models/export", image], project)
        assert done.returncode == 1 and done.stderr == (
            f"error: models/export/{name} is not the file export wrote there (its sha256 is not the one run.json "
            "records): edited or replaced since; export again (dvc repro export)\n"
        ), done.stderr
        path.write_bytes(kept)
    assert console(predict, ["--model", "models/export", image], project).returncode == 0


def test_a_positive_class_not_among_many_names_them_in_a_short_line(tmp_path):
    """The refusal listed every class name: up to 131,072 of them, a megabyte on one line."""
    from imgclf.deploy.predict import write_submission

    names = [f"class_{i:06d}" for i in range(100_000)]
    with pytest.raises(BadInput) as refused:
        write_submission([], names, "dog", 0.0, tmp_path / "submission.csv")
    said = str(refused.value)
    assert said.startswith("--positive 'dog' is not a class of this model; choose one of: class_000000, class_000001")
    assert said.endswith(" (100000 in all)") and len(said) < 300 and not (tmp_path / "submission.csv").exists()
