"""dogs-vs-cats from Kaggle's zip-in-zip layout, given as data.archive."""

import io
import zipfile

import pytest
from PIL import Image

from imgclf.data.split import read_index, read_labels
from imgclf.stages.fetch import fetch
from imgclf.stages.split import split


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def competition_zip(path, n=12, n_test=5, test1_zip=True):
    train, test1 = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(train, "w") as zf:
        for i in range(n):
            zf.writestr(f"train/cat.{i}.jpg", jpeg((200, 10 * i, 0)))
            zf.writestr(f"train/dog.{i}.jpg", jpeg((0, 10 * i, 200)))
        zf.writestr("train/notes.txt", "stray file")
    with zipfile.ZipFile(test1, "w") as zf:
        for i in range(1, n_test + 1):
            zf.writestr(f"test1/{i}.jpg", jpeg((90, 90, 90)))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train.zip", train.getvalue())
        if test1_zip:
            zf.writestr("test1.zip", test1.getvalue())
        zf.writestr("sampleSubmission.csv", "id,label\n1,0\n")
    return path


def test_archive_gives_labelled_train_and_unlabelled_predict_set(tmp_path, monkeypatch, compose_cfg):
    archive = competition_zip(tmp_path / "dogs-vs-cats.zip")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=dogs_vs_cats",
        f"data.archive={archive}",
        "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25",
        "data.split.sample_per_class=2",
    )
    fetch(cfg)
    split(cfg)
    split_dir = tmp_path / "data/dogs_vs_cats/split"
    assert read_labels(split_dir / "labels.txt") == ["cat", "dog"]
    rows = [r for s in ("train", "val", "test") for r in read_index(split_dir / f"{s}.csv")]
    assert len(rows) == 24 and all(p.split("/")[1].startswith(label + ".") for p, label in rows)
    predict = sorted(p.name for p in (tmp_path / "data/dogs_vs_cats/predict").iterdir())
    assert predict == [".imgclf-fetch", *(f"{i}.jpg" for i in range(1, 6))]  # the mark: fetch's own, to replace
    assert not (tmp_path / "data/dogs_vs_cats/downloads/extracted").exists()


def test_a_predict_dir_holding_the_users_files_is_refused_and_left_as_it_was(tmp_path, monkeypatch, compose_cfg):
    from imgclf.errors import BadInput

    archive = competition_zip(tmp_path / "dogs-vs-cats.zip")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=dogs_vs_cats", f"data.archive={archive}", f"data.fetch.predict_dir={mine}")
    with pytest.raises(BadInput, match=f"data.fetch.predict_dir={mine} holds files fetch did not write \\(keep.txt\\)"):
        fetch(cfg)
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"] and (mine / "keep.txt").read_text() == "the user's"
    assert not (tmp_path / "data/dogs_vs_cats/images").exists()
    (mine / "keep.txt").unlink()  # an empty folder is fetch's to fill
    fetch(cfg)
    assert len(list(mine.glob("*.jpg"))) == 5


def test_the_users_folders_in_download_dir_are_left_alone_and_nothing_is_left_behind(
    tmp_path, monkeypatch, compose_cfg
):
    from imgclf.errors import BadInput

    archive = competition_zip(tmp_path / "dogs-vs-cats.zip")
    dl = tmp_path / "mydl"
    (dl / "extracted").mkdir(parents=True)
    (dl / "extracted" / "keep.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path)
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={archive}", f"data.fetch.download_dir={dl}"))
    assert (dl / "extracted" / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in dl.iterdir()) == ["extracted"]  # the scratch folder is gone
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("train.zip", b"not a zip")
    with pytest.raises(BadInput, match="its train.zip is not a readable zip"):
        fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={tmp_path / 'bad.zip'}", f"data.fetch.download_dir={dl}"))
    assert sorted(p.name for p in dl.iterdir()) == ["extracted"]  # a failed fetch leaves no train.zip behind
    assert len(list((tmp_path / "data/dogs_vs_cats/images").rglob("*.jpg"))) == 24  # the good fetch's, kept


def test_a_refetch_replaces_its_own_predict_dir_and_an_archive_without_test1_empties_it(
    tmp_path, monkeypatch, compose_cfg
):
    predict = tmp_path / "data/dogs_vs_cats/predict"
    monkeypatch.chdir(tmp_path)
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={competition_zip(tmp_path / 'a.zip', n_test=5)}"))
    assert len(list(predict.glob("*.jpg"))) == 5
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={competition_zip(tmp_path / 'b.zip', n_test=3)}"))
    assert sorted(p.name for p in predict.glob("*.jpg")) == ["1.jpg", "2.jpg", "3.jpg"]
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={competition_zip(tmp_path / 'c.zip', test1_zip=False)}"))
    assert list(predict.iterdir()) == []  # another archive's test1 set is not this one's; DVC's output stays


def test_a_zip_remade_on_macos_reads_train_not_its_resource_forks(tmp_path, monkeypatch, compose_cfg):
    """macOS's zip adds __MACOSX/train/._cat.0.jpg, which sorts before train/: it was taken as the train set, and an
    empty images/ replaced the good one with exit 0."""
    mac = tmp_path / "train.zip"
    with zipfile.ZipFile(mac, "w") as zf:
        for i in range(4):
            zf.writestr(f"train/cat.{i}.jpg", jpeg((200, 10 * i, 0)))
            zf.writestr(f"train/dog.{i}.jpg", jpeg((0, 10 * i, 200)))
            zf.writestr(f"__MACOSX/train/._cat.{i}.jpg", b"\0\5\26\7 resource fork")
    monkeypatch.chdir(tmp_path)
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={mac}"))
    images = tmp_path / "data/dogs_vs_cats/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg")) == sorted(
        f"{label}/{label}.{i}.jpg" for label in ("cat", "dog") for i in range(4)
    )


@pytest.mark.parametrize(
    "names", [["cat.0.jpg", "cat.1.jpg"], ["IMG_0001.jpg"], []], ids=["cats only", "unnamed", "empty"]
)
def test_fewer_than_two_classes_is_refused_and_the_images_kept(names, tmp_path, monkeypatch, compose_cfg):
    from imgclf.errors import BadInput

    monkeypatch.chdir(tmp_path)
    fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={competition_zip(tmp_path / 'good.zip')}"))
    bad = tmp_path / "train.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("train/", b"")
        for name in names:
            zf.writestr(f"train/{name}", jpeg((200, 0, 0)))
    with pytest.raises(
        BadInput, match=r"train.zip: train/ holds \d images named cat.N.jpg or dog.N.jpg \((cat|neither)\)"
    ):
        fetch(compose_cfg("data=dogs_vs_cats", f"data.archive={bad}"))
    assert len(list((tmp_path / "data/dogs_vs_cats/images").rglob("*.jpg"))) == 24  # the good fetch's
    assert len(list((tmp_path / "data/dogs_vs_cats/predict").glob("*.jpg"))) == 5


def fetch_args(archive, *more):
    """The fetch stage's command line, as dvc.yaml runs it."""
    from ..conftest import ROOT

    conf = ["--config-dir", str(ROOT / "conf"), "data=dogs_vs_cats", f"data.archive={archive}", *more]
    return [*conf, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


@pytest.mark.parametrize(
    "second,listed",
    [("train/train/", "train/, train/train/"), ("copy/train/", "copy/train/, train/")],
    ids=["train inside train", "train elsewhere"],
)
def test_a_zip_with_two_train_folders_is_refused_in_one_line(second, listed, tmp_path):
    """Which train/ holds the data set is not ours to guess: the first in path order was taken, the other dropped."""
    from ..conftest import stage_main

    bad = tmp_path / "in" / "train.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as zf:
        for folder in ("train/", second):
            zf.writestr(f"{folder}cat.1.jpg", jpeg((200, 0, 0)))
            zf.writestr(f"{folder}dog.1.jpg", jpeg((0, 0, 200)))
    done = stage_main("fetch", fetch_args(bad), tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {bad}: holds 2 train/ ({listed}); expected one, as Kaggle's"), done.stderr
    assert not (tmp_path / "data").exists()


def test_a_zip_with_train_and_train_zip_is_refused_naming_both(tmp_path):
    """Unpacked, the inner train.zip's train/ merged into the outer one: the union, fetched with exit 0."""
    from ..conftest import stage_main

    (tmp_path / "in").mkdir()
    archive = competition_zip(tmp_path / "in" / "dogs-vs-cats.zip", n=3)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("train/cat.0.jpg", jpeg((0, 200, 0)))
        zf.writestr("train/dog.0.jpg", jpeg((0, 200, 0)))
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {archive}: holds both train/ and train.zip; expected one"), done.stderr
    assert not (tmp_path / "data").exists()


def test_a_corrupt_inner_train_zip_is_named_as_not_a_zip(tmp_path):
    from ..conftest import stage_main

    archive = tmp_path / "in" / "dogs-vs-cats.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.zip", b"PK\x03\x04 cut short")
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {archive}: its train.zip is not a readable zip"), done.stderr
    assert not (tmp_path / "data").exists()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:  # stored, so one flipped byte is a bad CRC, not a bad header
        zf.writestr("train/cat.0.jpg", jpeg((200, 0, 0)))
    damaged = inner.getvalue().replace(b"JFIF", b"JFIX", 1)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.zip", damaged)
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {archive}: train.zip: corrupt or truncated archive (BadZipFile"), done.stderr


def test_folders_and_names_with_control_characters_are_skipped_and_counted_in_one_warning(tmp_path):
    """A folder named like an image, a name ending in a newline (a regex `$` let it through: a newline in a file name
    splits the split's lists), another script's digits: none is an image of Kaggle's, each is named in the warning."""
    from ..conftest import stage_main

    archive = tmp_path / "in" / "dogs-vs-cats.zip"
    archive.parent.mkdir()
    hostile = ["cat.99.jpg/x.jpg", "cat.5.jpg\n", "dog.6.jpg\r", "cat.\u0667.jpg", "dog.7.jpg\u2028"]
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"train/cat.{i}.jpg", jpeg((200, 0, 0)))
            zf.writestr(f"train/dog.{i}.jpg", jpeg((0, 0, 200)))
        for name in hostile:
            zf.writestr(f"train/{name}", jpeg((0, 200, 0)))
        for name in ("1.jpg", "2.jpg\n", "sub/3.jpg"):
            zf.writestr(f"test1/{name}", jpeg((90, 90, 90)))
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    images = tmp_path / "data/dogs_vs_cats/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*")) == [
        "cat", *(f"cat/cat.{i}.jpg" for i in range(3)), "dog", *(f"dog/dog.{i}.jpg" for i in range(3))
    ]  # fmt: skip
    predict = tmp_path / "data/dogs_vs_cats/predict"
    assert sorted(p.name for p in predict.iterdir()) == [".imgclf-fetch", "1.jpg"]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "skipped" in line]
    assert len(said) == 2, done.stdout[-3000:]
    assert "skipped 5 entries of train/: 3 a control character in the name: 'cat.5.jpg\\n'" in said[0], said
    assert "1 not a file: 'cat.99.jpg'" in said[0] and "1 not named cat.N.jpg or dog.N.jpg: 'cat.\u0667.jpg'" in said[0]
    assert "skipped 2 entries of test1/: 1 a control character in the name: '2.jpg\\n'; 1 not a file: 'sub'" in said[1]


def test_missing_archive_file_says_how_to_get_it(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.archive=/nope.zip does not exist; set data.archive="):
        fetch(compose_cfg("data=dogs_vs_cats", "data.archive=/nope.zip"))


class FakeKaggle:
    """The few calls the kaggle client makes to download competition files, served on http://localhost, where
    kaggle 2.x sends them under KAGGLE_API_ENVIRONMENT=LOCALHOST (its --local mode; the SDK's TEST value, port
    7777, is ignored by the kaggle package, which passes its environment explicitly): 401 for a wrong key,
    403 for a user who has not accepted the competition's rules."""

    def __init__(self, archive_bytes: bytes):
        import base64
        import http.server
        import threading

        self.calls = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.calls.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                user, _, key = (
                    base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":") if auth else ("", "", "")
                )
                if self.path != "/api/v1/competitions.CompetitionApiService/DownloadDataFiles":
                    return self.send_error(404)
                if key != "good-key":
                    return self._json(401, {"code": 401, "message": "Unauthenticated"})
                if user == "norules":
                    return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                self.send_response(302)
                self.send_header("Location", "/blobs/dogs-vs-cats.zip?token=abc")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                outer.calls.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(archive_bytes)))
                self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                self.end_headers()
                self.wfile.write(archive_bytes)

            def _json(self, status, body):
                import json

                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 80), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    import tempfile

    from filelock import FileLock

    archive = competition_zip(tmp_path / "served.zip")
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "kaggle-config"
    config.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # both read when kaggle is first imported
    from kaggle.api.kaggle_api_extended import KaggleApi

    # the same settings, should kaggle have been imported by an earlier test
    monkeypatch.setattr(KaggleApi, "args", ["--local"])
    monkeypatch.setattr(KaggleApi, "config_dir", str(config))
    monkeypatch.setattr(KaggleApi, "config", str(config / "kaggle.json"))
    with FileLock(f"{tempfile.gettempdir()}/imgclf-tests-port-80.lock"):  # Kaggle's local API is on port 80: one
        server = FakeKaggle(archive.read_bytes())  # test worker at a time
        yield server
        server.close()


def test_kaggle_download_with_the_real_client(fake_kaggle, tmp_path, monkeypatch, compose_cfg, caplog):
    import json

    config = tmp_path / "kaggle-config"
    (config / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "good-key"}))
    (config / "kaggle.json").chmod(0o600)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=dogs_vs_cats",
        "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25",
        "data.split.sample_per_class=2",
    )
    caplog.set_level("INFO")
    fetch(cfg)
    split(cfg)
    assert fake_kaggle.calls == [
        "/api/v1/competitions.CompetitionApiService/DownloadDataFiles",
        "/blobs/dogs-vs-cats.zip?token=abc",
    ]
    assert len(read_index(tmp_path / "data/dogs_vs_cats/split/train.csv")) == 12
    assert "good-key" not in caplog.text  # the secret never reaches the logs
    fetch(cfg)  # idempotent: the downloaded zip is reused
    assert len(fake_kaggle.calls) == 2


@pytest.mark.parametrize(
    "creds,message",
    [
        (None, "no Kaggle credentials found"),
        (("alice", "bad-key"), "Kaggle rejected the credentials from KAGGLE_USERNAME/KAGGLE_KEY (401)"),
        (("norules", "good-key"), "accept the competition rules at https://www.kaggle.com/c/dogs-vs-cats/rules"),
    ],
)
def test_kaggle_preflight_messages(fake_kaggle, tmp_path, monkeypatch, compose_cfg, creds, message):
    if creds:
        monkeypatch.setenv("KAGGLE_USERNAME", creds[0])
        monkeypatch.setenv("KAGGLE_KEY", creds[1])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PermissionError, match=message.replace("(", "\\(").replace(")", "\\)")) as info:
        fetch(compose_cfg("data=dogs_vs_cats"))
    assert "\n" not in str(info.value) and "bad-key" not in str(info.value)
    assert not (tmp_path / "data/dogs_vs_cats/images").exists()


def test_kaggle_out_of_reach_is_one_line_saying_what_to_do(fake_kaggle, tmp_path, monkeypatch, compose_cfg):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "good-key")
    fake_kaggle.close()  # no network, or a proxy that is down: nothing answers
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cannot reach Kaggle to download 'dogs-vs-cats' \(") as info:
        fetch(compose_cfg("data=dogs_vs_cats"))
    assert "\n" not in str(info.value) and "data.archive" in str(info.value) and "good-key" not in str(info.value)
    assert not (tmp_path / "data/dogs_vs_cats/images").exists()
