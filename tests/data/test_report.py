import csv
import json

from PIL import Image

from imgclf.data.folder import ImageInfo
from imgclf.data.report import (
    class_counts,
    conflicting_labels,
    cross_split_duplicates,
    lookalike_classes,
    size_stats,
)
from imgclf.stages.fetch import fetch
from imgclf.stages.split import split

from ..conftest import make_class_folders


def info(w, h, mode="RGB", digest="x"):
    return ImageInfo(w, h, mode, digest)


def test_duplicates_only_across_splits():
    splits = {"train": [("a/1", "a"), ("a/2", "a")], "val": [("a/3", "a")], "test": [("b/4", "b")]}
    infos = {
        "a/1": info(1, 1, digest="same"),
        "a/2": info(1, 1, digest="twin"),
        "a/3": info(1, 1, digest="same"),
        "b/4": info(1, 1, digest="other"),
    }
    dups = cross_split_duplicates(splits, infos)
    assert dups == [{"digest": "same", "images": [{"split": "train", "path": "a/1"}, {"split": "val", "path": "a/3"}]}]
    infos["a/2"] = info(1, 1, digest="other")  # now a/2 (train) and b/4 (test) match too
    assert len(cross_split_duplicates(splits, infos)) == 2


def test_one_picture_under_two_classes_is_a_conflict_in_any_split_and_only_pixels_and_size_make_a_picture(tmp_path):
    from imgclf.data.folder import inspect_image

    splits = {"train": [("a/1", "a"), ("b/1", "b"), ("a/2", "a")], "val": [("a/3", "a")], "test": []}
    infos = {"a/1": info(1, 1, digest="same"), "b/1": info(1, 1, digest="same")}
    infos |= {"a/2": info(1, 1, digest="twin"), "a/3": info(1, 1, digest="twin")}  # one class: a duplicate only
    assert conflicting_labels(splits, infos) == [
        {"digest": "same", "images": [{"split": "train", "path": "a/1", "label": "a"},
                                      {"split": "train", "path": "b/1", "label": "b"}]}
    ]  # fmt: skip
    digests = set()
    for name, size, mode in (
        ("tall", (2, 8), "L"),
        ("wide", (8, 2), "L"),
        ("square", (4, 4), "L"),
        ("rgb", (4, 4), "RGB"),
    ):
        Image.new(mode, size).save(tmp_path / f"{name}.png")  # all black: the same bytes of pixels, or a prefix
        digests.add(inspect_image(tmp_path / f"{name}.png")[1].digest)
    assert len(digests) == 4


def test_class_names_that_differ_only_by_case_or_unicode_form_are_one_group():
    names = ["Case", "case", "caf\u00e9", "cafe\u0301", "plain", "CASE"]
    assert lookalike_classes(names) == [["Case", "case", "CASE"], ["caf\u00e9", "cafe\u0301"]]
    assert lookalike_classes(["a", "b"]) == []


def test_size_stats_and_counts():
    stats = size_stats({"a": info(10, 20, "L"), "b": info(30, 40), "c": info(20, 30)})
    assert stats == {
        "width": {"min": 10, "max": 30, "mean": 20.0},
        "height": {"min": 20, "max": 40, "mean": 30.0},
        "modes": {"RGB": 2, "L": 1},
    }
    rows = class_counts({"train": [("x", "a")] * 3, "val": [("y", "b")], "test": []}, ["a", "b"])
    assert {(r["class"], r["split"]): r["images"] for r in rows}[("a", "train")] == 3
    assert len(rows) == 6


def test_split_writes_the_report_with_leakage(tmp_path, monkeypatch, compose_cfg):
    src = make_class_folders(tmp_path / "src", {"a": 20, "b": 20})
    for i in range(6):  # the same picture six times: some copies land in different splits
        Image.new("RGB", (8, 8), "white").save(src / "a" / f"dup{i}.png")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=folder", f"data.path={src}", "data.split.sample_per_class=2")
    fetch(cfg)
    split(cfg)
    report = json.loads((tmp_path / "reports/split/report.json").read_text())
    assert report["images_per_split"] == {"train": 32, "val": 7, "test": 7}
    assert report["image_size"]["width"] == {"min": 8, "max": 8, "mean": 8.0}
    groups = report["cross_split_duplicates"]["examples"]
    assert report["cross_split_duplicates"]["groups"] == 1 and all("/dup" in m["path"] for m in groups[0]["images"])
    assert report["conflicting_labels"] == {"groups": 0, "examples": []}  # every copy is an a
    assert report["lookalike_classes"] == {"groups": 0, "examples": []}
    rows = list(csv.DictReader(open(tmp_path / "reports/split/class_counts.csv")))
    assert sum(int(r["images"]) for r in rows) == 46
    for png in ("class_counts.png", "samples.png"):
        assert Image.open(tmp_path / "reports/split" / png).size[0] > 100
