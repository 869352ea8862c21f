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


def competition_zip(path, n=12, n_test=5):
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
        zf.writestr("test1.zip", test1.getvalue())
        zf.writestr("sampleSubmission.csv", "id,label\n1,0\n")
    return path


def test_archive_gives_labelled_train_and_unlabelled_predict_set(tmp_path, monkeypatch, compose_cfg):
    archive = competition_zip(tmp_path / "dogs-vs-cats.zip")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=dogs_vs_cats", f"data.archive={archive}", "data.split.val_fraction=0.25",
                      "data.split.test_fraction=0.25", "data.split.sample_per_class=2")
    fetch(cfg)
    split(cfg)
    split_dir = tmp_path / "data/dogs_vs_cats/split"
    assert read_labels(split_dir / "labels.txt") == ["cat", "dog"]
    rows = [r for s in ("train", "val", "test") for r in read_index(split_dir / f"{s}.csv")]
    assert len(rows) == 24 and all(p.split("/")[1].startswith(label + ".") for p, label in rows)
    predict = sorted(p.name for p in (tmp_path / "data/dogs_vs_cats/predict").iterdir())
    assert predict == [f"{i}.jpg" for i in range(1, 6)]
    assert not (tmp_path / "data/dogs_vs_cats/downloads/extracted").exists()


def test_missing_archive_says_how_to_get_it(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="kaggle competitions download -c dogs-vs-cats"):
        fetch(compose_cfg("data=dogs_vs_cats"))
