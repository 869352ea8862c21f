"""Property-based: whatever a user or a client sends (paths, model folders, image files, overrides), the answer is a
correct result or one line naming the mistake; never a traceback, a 500, a changed file or a read outside the
roots. hypothesis finds the cases nobody listed; these are the doors users and clients come in by."""

import hashlib
import io
import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.errors import USER_ERRORS

from .conftest import ROOT, serve_client
from .deploy.test_webapp import png_header

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def tree_digest(root: Path) -> str:
    """What is under `root`, names and bytes: equal before and after means nothing was changed or deleted."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def site(trained_project, tmp_path_factory):
    """A served app reading `root` only, beside an `outside` folder of images it must never read."""
    base = tmp_path_factory.mktemp("site")
    root, outside = base / "root", base / "outside"
    (root / "images" / "deep").mkdir(parents=True)
    outside.mkdir()
    image = next((trained_project / "data/tiny/images/b").iterdir()).read_bytes()
    (root / "images" / "0.png").write_bytes(image)
    (root / "images" / "deep" / "1.png").write_bytes(image)
    (outside / "secret.png").write_bytes(image)
    (root / "images" / "link_out.png").symlink_to(outside / "secret.png")
    (root / "images" / "dir_out").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    (root / "list.txt").write_text(f"{outside / 'secret.png'}\nimages/0.png\n../outside/secret.png\n\0\n")
    return serve_client(trained_project, base / "cache", [root]), root, outside


PARTS = ["..", ".", "~", "images", "deep", "0.png", "1.png", "link_out.png", "dir_out", "secret.png", "list.txt",
         "loop", "missing", "etc", "passwd", "%2e%2e", "", "\0", "a" * 300, "ü", " "]  # fmt: skip


@SETTINGS
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=6), anchor=st.sampled_from(["root", "out", "rel"]))
def test_serve_reads_only_under_its_roots(site, parts, anchor):
    client, root, outside = site
    before = tree_digest(outside), tree_digest(root)
    base = {"root": str(root), "out": str(outside), "rel": ""}[anchor]
    path = "/".join([base, *parts]) if base else "/".join(parts)
    answer = client.post("/api/classify", data={"path": path})
    assert answer.status_code in (200, 400, 403, 404), (path, answer.text)
    body = answer.json()
    if answer.status_code != 200:
        assert "\n" not in body["error"]
        return
    for row in body["results"]:
        if row.get("top"):  # classified, so read: it must lie under the root once links are followed
            assert Path(row["name"]).resolve().is_relative_to(root.resolve()), row["name"]
        else:
            assert row["error"] and "\n" not in row["error"]
    assert (tree_digest(outside), tree_digest(root)) == before


def png_bytes(size=(12, 9), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n: png_bytes()[:n], st.integers(0, len(png_bytes()))),  # truncated anywhere
    st.builds(png_header, st.integers(0, 200_000), st.integers(0, 200_000)),  # any size in the header
    st.builds(
        lambda m, w, h: png_bytes((w, h), m),
        st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]),
        st.integers(1, 64),
        st.integers(1, 64),
    ),  # fmt: skip
    st.just(b"GIF89a" + b"\xff" * 20),
)


@SETTINGS
@given(data=IMAGES, suffix=st.sampled_from([".png", ".jpg", ".txt", "", ".gif", ".tif"]))
def test_any_upload_is_classified_or_named_unreadable(site, data, suffix):
    client, _, _ = site
    answer = client.post("/api/classify", files={"files": (f"x{suffix}", data)})
    assert answer.status_code == 200, answer.text
    row = answer.json()["results"][0]
    assert (row["error"] is None) == bool(row.get("top")) and "\n" not in (row["error"] or "")


CONTRACT = st.fixed_dictionaries(
    {},
    optional={
        "image_size": st.one_of(st.integers(-5, 70_000), st.text(max_size=3), st.none(), st.floats()),
        "resize_size": st.one_of(st.integers(-5, 70_000), st.none(), st.text(max_size=3)),
        "mean": st.one_of(st.lists(st.floats(allow_nan=True), max_size=4), st.text(max_size=3)),
        "std": st.one_of(st.lists(st.floats(-1, 2), max_size=4), st.just([0, 0, 0])),
        "interpolation": st.sampled_from(["bilinear", "nearest", "cubic", "", None]),
        "resize": st.sampled_from(["crop", "squash", "stretch", None]),
        "tta": st.one_of(st.lists(st.sampled_from(["hflip", "crops", "spin"]), max_size=2), st.just("hflip")),
    },
)
LABELS = st.one_of(
    st.lists(st.text(string.ascii_letters, min_size=1, max_size=4), max_size=5).map("\n".join),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


@SETTINGS
@given(spec=CONTRACT, labels=LABELS, model=st.sampled_from(["model.onnx", "garbage.onnx", "empty.onnx", "none"]))
def test_any_model_folder_loads_or_is_refused_in_one_line(trained_project, tmp_path_factory, spec, labels, model):
    from imgclf.deploy.predict import Classifier

    export = trained_project / "models/export"
    folder = tmp_path_factory.mktemp("model")
    (folder / "labels.txt").write_text(labels)
    base = json.loads((export / "preprocessing.json").read_text())
    (folder / "preprocessing.json").write_text(json.dumps({**base, **spec}))
    if model == "model.onnx":
        shutil.copy(export / "model.onnx", folder / "model.onnx")
    elif model != "none":
        (folder / "model.onnx").write_bytes(b"" if model == "empty.onnx" else b"\x08\x07garbage")
    try:
        classifier = Classifier(folder)
    except USER_ERRORS as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # loaded: then everything about it was valid, and it classifies
    assert model == "model.onnx" and len(classifier.class_names) == 3
    image = next((trained_project / "data/tiny/images/c").iterdir())
    assert classifier.classify([image])[0].probs.shape == (3,)


OVERRIDE_KEYS = ["trainer.epochs", "trainer.batch_size", "optim.lr", "schedule.pct_start", "model.image_size",
                 "data.split.val_fraction", "trainer.resume", "trainer.device", "model", "optim", "finetune",
                 "trainer.epoch", "+trainer.epoch", "~seed", "seed", "model.crop_pct"]  # fmt: skip
VALUES = st.one_of(
    st.integers(-10, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["null", "true", "abc", "", "[1,2]", "{a: 1}", "/etc/passwd", "${oops}", "vgg61", "auto", "1e-3"]),
)


@SETTINGS
@given(overrides=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), VALUES), min_size=1, max_size=3))
def test_any_override_composes_or_is_one_line(overrides):
    from imgclf.config import check_overrides, compose
    from imgclf.options import Options

    args = [f"{k}={v}" for k, v in overrides]
    error = check_overrides(args, root=ROOT)
    if error is not None:
        assert "\n" not in error
        return
    try:
        Options.from_config(compose(args, root=ROOT))
    except USER_ERRORS as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module")
def workspace(trained_project, tmp_path_factory):
    """A folder of a user's files beside the model: what `imgclf predict` is pointed at and writes into."""
    base = tmp_path_factory.mktemp("workspace")
    (base / "photos" / "deep").mkdir(parents=True)
    image = next((trained_project / "data/tiny/images/a").iterdir()).read_bytes()
    (base / "photos" / "0.png").write_bytes(image)
    (base / "photos" / "deep" / "1.png").write_bytes(image)
    (base / "photos" / "notes.txt").write_text("photos/0.png\nnowhere.png\n")
    (base / "photos" / "link.png").symlink_to(base / "photos" / "0.png")
    (base / "photos" / "loop").symlink_to(base / "photos" / "loop")
    (base / "results").mkdir()
    (base / "results" / "keep.csv").write_text("mine")
    return base


CLI_PARTS = ["photos", "deep", "0.png", "1.png", "notes.txt", "link.png", "loop", "results", "keep.csv", "..", ".",
             "missing", "\0", "a" * 300, "x.json", "x.csv", ""]  # fmt: skip


@SETTINGS
@given(
    inputs=st.lists(st.lists(st.sampled_from(CLI_PARTS), min_size=1, max_size=4).map("/".join), min_size=1, max_size=3),
    out=st.one_of(st.none(), st.lists(st.sampled_from(CLI_PARTS), min_size=1, max_size=3).map("/".join)),
)
def test_predict_answers_or_says_one_line_and_loses_nothing(trained_project, workspace, inputs, out, capsys,
                                                            monkeypatch):  # fmt: skip
    from imgclf import cli

    monkeypatch.chdir(workspace)
    mine = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file() and not p.is_symlink()}
    args = [*inputs, "--model", str(trained_project / "models/export")] + (["--out", out] if out else [])
    try:
        code = cli.predict(args)
    except SystemExit as exc:  # argparse's own usage error, e.g. an option-like path: a usage line and exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), err
    assert all(line.startswith(("error: ", "usage: ", "imgclf predict: ")) or line.endswith("be classified")
               or line.startswith(" ") for line in err.splitlines()), err  # fmt: skip
    for path, content in mine.items():  # the user's files: none deleted or changed
        assert path.is_file() and path.read_bytes() == content, path
    for path in workspace.rglob("*"):  # and nothing new but the file asked for
        assert path in mine or path.is_symlink() or path.is_dir() or (out and path == (workspace / out).resolve())
        if path.is_file() and path not in mine:
            path.unlink()
