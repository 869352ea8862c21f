"""data=folder: DIGITS' class folders with bad files, optional val/test folders, excluded classes."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from imgclf.data.split import read_index, read_labels
from imgclf.stages.fetch import fetch
from imgclf.stages.split import split

from ..conftest import ROOT, make_class_folders, stage_main


def add_odd_images(root):
    """Every mode DIGITS users bring, plus files that must be skipped."""
    for mode, fmt, name in (
        ("L", "PNG", "gray.png"),
        ("RGBA", "PNG", "rgba.png"),
        ("CMYK", "JPEG", "cmyk.jpg"),
        ("P", "BMP", "palette.bmp"),
        ("RGB", "WEBP", "photo.webp"),
    ):
        Image.new(mode, (12, 10)).save(root / "cat" / name, format=fmt)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    (root / "dog" / "png_named.jpg").write_bytes(buf.getvalue())
    (root / "dog" / "zero.jpg").write_bytes(b"")
    (root / "dog" / "readme.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_bytes(b"junk")


def test_folder_with_bad_files_and_all_modes(tmp_path, monkeypatch, compose_cfg):
    src = make_class_folders(tmp_path / "train_small", {"cat": 10, "dog": 10, "BACKGROUND_Google": 3})
    add_odd_images(src)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=caltech101", f"data.path={src}", "data.split.sample_per_class=2")
    fetch(cfg)
    split(cfg)
    split_dir = tmp_path / "data/caltech101/split"
    assert read_labels(split_dir / "labels.txt") == ["cat", "dog"]  # BACKGROUND_Google excluded
    paths = [p for s in ("train", "val", "test") for p, _ in read_index(split_dir / f"{s}.csv")]
    assert len(paths) == 26 and "dog/png_named.jpg" in paths and "cat/cmyk.jpg" in paths
    import json

    report = json.loads((split_dir / "report.json").read_text())
    assert report["skipped"]["counts"] == {"empty file": 1, "not an image": 1}
    assert {f["path"] for f in report["skipped"]["files"]} == {"dog/zero.jpg", "dog/readme.txt"}


def test_separate_val_and_test_folders_are_kept(tmp_path, monkeypatch, compose_cfg, caplog):
    train = make_class_folders(tmp_path / "train", {"a": 8, "b": 8})
    val = make_class_folders(tmp_path / "val", {"a": 2, "b": 2})
    test = make_class_folders(tmp_path / "test", {"a": 3, "b": 3})
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=folder", f"data.path={train}", f"data.val_path={val}", f"data.test_path={test}")
    fetch(cfg)
    assert "left out" not in caplog.text  # nothing was: no warning
    split(cfg)
    split_dir = tmp_path / "data/folder/split"
    assert len(read_index(split_dir / "train.csv")) == 16
    assert all(p.split("/")[1].startswith("val__") for p, _ in read_index(split_dir / "val.csv"))
    assert len(read_index(split_dir / "test.csv")) == 6


def test_val_and_test_folders_apart_from_the_training_folder_and_of_its_classes(tmp_path, monkeypatch, compose_cfg):
    """A test folder that is the training folder (or inside it, or around it) would be trained on; a class only the
    test folder has, nothing learns: each is one line, before anything is copied."""
    train = make_class_folders(tmp_path / "train", {"a": 8, "b": 8})
    other = make_class_folders(tmp_path / "test", {"a": 3, "zebra": 3})
    monkeypatch.chdir(tmp_path)
    for test, says in (
        (train, f"data.path={train} and data.test_path={train} overlap: the same images would be trained and tested"),
        (train / "a", "overlap"),
        (tmp_path, "holds fetch's own output (data/folder)"),  # and overlaps data.path
        (other, "data.test_path has class folders data.path lacks: zebra; classes of data.path: a, b"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            fetch(compose_cfg("data=folder", f"data.path={train}", f"data.test_path={test}"))
        assert not (tmp_path / "data/folder/images").exists()
    with pytest.raises(ValueError, match=re.escape("data.val_path has class folders data.path lacks: zebra")):
        fetch(compose_cfg("data=folder", f"data.path={train}", f"data.val_path={other}"))


def test_split_reads_a_file_in_pieces_not_whole(tmp_path):
    """A 300 MB file in a class folder that is no image costs split its header, not its size in memory (the
    largest file times the workers, before)."""
    import tracemalloc

    from imgclf.data.folder import inspect_image

    big = tmp_path / "huge.png"
    with big.open("wb") as f:
        f.truncate(300_000_000)  # sparse: no disk used
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "small.png")
    tracemalloc.start()
    try:
        assert inspect_image(big) == ("not an image", None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000
    import hashlib

    reason, info = inspect_image(tmp_path / "small.png")
    assert reason is None and info.sha256 == hashlib.sha256((tmp_path / "small.png").read_bytes()).hexdigest()


def test_folder_errors_are_clear(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="data=folder needs data.path="):
        fetch(compose_cfg("data=folder"))
    with pytest.raises(ValueError, match="data.path=.*nope does not exist: give a folder"):
        fetch(compose_cfg("data=folder", f"data.path={tmp_path / 'nope'}"))
    assert not (tmp_path / "data/folder/images").exists()  # nothing half-written
    src = make_class_folders(tmp_path / "src", {"a": 2, "b": 2})
    (src / "c").mkdir()  # an empty class: dropped silently, the model would have had two classes
    (src / "d").mkdir()
    (src / "d" / ".DS_Store").write_bytes(b"x")  # hidden files only: empty too
    with pytest.raises(ValueError, match=f"class folder {src / 'c'} has no files; .* data.exclude=\\[c\\]"):
        fetch(compose_cfg("data=folder", f"data.path={src}"))
    assert not (tmp_path / "data/folder/images").exists()
    (src / "c" / "x.png").write_bytes((src / "a" / "000.png").read_bytes())
    with pytest.raises(ValueError, match=f"class folder {src / 'd'} has no files"):
        fetch(compose_cfg("data=folder", f"data.path={src}"))
    with pytest.raises(ValueError, match=re.escape("data.exclude names 'D', which is no class folder of")):
        fetch(compose_cfg("data=folder", f"data.path={src}", "data.exclude=[D]"))  # a typo left the class in
    with pytest.raises(ValueError, match=re.escape("(did you mean d?)")):
        fetch(compose_cfg("data=folder", f"data.path={src}", "data.exclude=[dd]"))
    fetch(compose_cfg("data=folder", f"data.path={src}", "data.exclude=[d,BACKGROUND_Google]"))  # a preset's name
    assert sorted(p.name for p in (tmp_path / "data/folder/images").iterdir()) == ["a", "b", "c"]


def test_a_class_named_as_a_list_or_a_name_too_long_once_flattened_is_one_line_naming_it(
    tmp_path, monkeypatch, compose_cfg
):
    """Both failed at the copy, blaming data/folder/images: `could not write ...: Is a directory` for a class folder
    named val.txt beside data.val_path's list, `File name too long` for nested folders flattened into one name."""
    from imgclf.targets import MAX_NAME

    monkeypatch.chdir(tmp_path)
    src = make_class_folders(tmp_path / "src", {"a": 3, "b": 3, "val.txt": 3})
    val = make_class_folders(tmp_path / "val", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="^data.path has a class folder named val.txt, the file fetch lists the held"):
        fetch(compose_cfg("data=folder", f"data.path={src}", f"data.val_path={val}"))
    deep = src / "a" / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / "x.png").write_bytes((src / "a" / "000.png").read_bytes())
    with pytest.raises(ValueError, match=f"would be copied as a name of over {MAX_NAME} bytes"):
        fetch(compose_cfg("data=folder", f"data.path={src}"))
    assert not (tmp_path / "data").exists()


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    from imgclf.data.folder import inspect_image

    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr("imgclf.data.images.MAX_PIXELS", 5000)  # the one pixel limit of every decode
    assert inspect_image(tmp_path / "big.png") == ("decompression bomb", None)


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_a_long_thin_image_is_refused_before_its_resize_outgrows_the_pixel_limit(resize, monkeypatch):
    """A 1 x 3,000 PNG is under the limit, but its shorter side resized to 64 px makes 64 x 192,000 pixels (a few
    hundred bytes of 1 x 300,000 would make 19 G): refused from the sizes, before any resize allocates."""
    from imgclf.data.images import ImageTooLarge, decode_image

    monkeypatch.setattr("imgclf.data.images.MAX_PIXELS", 100_000)
    thin = io.BytesIO()
    Image.new("L", (1, 3000), 128).save(thin, "PNG")
    with pytest.raises(ImageTooLarge, match="1 x 3000 pixels is too long and thin for 64 px"):
        decode_image(io.BytesIO(thin.getvalue()), 64, resize=resize)
    assert decode_image(io.BytesIO(thin.getvalue()), 4, resize=resize).shape == (4, 4, 3)  # 4 x 12,000: under


def test_a_long_thin_image_the_split_took_is_named_when_training_decodes_it(tmp_path, monkeypatch):
    """The split knows no image size, so it takes an image too long and thin for model.image_size: the stage that
    decodes it at that size names the file and how to leave it out (it said only "image of 1 x 3000 pixels")."""
    from imgclf.data.datasets import decode_checked
    from imgclf.data.images import ImageTooLarge

    monkeypatch.setattr("imgclf.data.images.MAX_PIXELS", 100_000)
    Image.new("L", (1, 3000), 128).save(tmp_path / "thin.png")
    with pytest.raises(ImageTooLarge) as refused:
        decode_checked(tmp_path / "thin.png", None, 64)
    assert str(refused.value) == (
        f"{tmp_path / 'thin.png'}: image of 1 x 3000 pixels is too long and thin for 64 px: resized, it would be over "
        "the limit of 100,000 pixels; leave it out: imgclf relabel PATH=exclude, then dvc repro"
    )


def test_the_split_reports_sample_grid_holds_thumbnails_under_the_pixel_limit(tmp_path, monkeypatch):
    """samples.png shows up to 160 images: each is read as a thumbnail of at most 128 px (a JPEG decoded at 1/8 of
    its size), turned as shown, and refused past the pixel limit like every decode."""
    from imgclf.data.images import ImageTooLarge, thumbnail

    photo = np.zeros((3000, 4000, 3), np.uint8)
    photo[:, :2000] = 255
    Image.fromarray(photo).save(tmp_path / "photo.jpg", exif=_turned())
    small = thumbnail(tmp_path / "photo.jpg")
    assert small.size == (96, 128) and small.mode == "RGB"  # portrait, as the EXIF tag says it is shown
    monkeypatch.setattr("imgclf.data.images.MAX_PIXELS", 1000)
    with pytest.raises(ImageTooLarge):
        thumbnail(tmp_path / "photo.jpg")


def _turned():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as a portrait
    return exif


def test_links_leading_outside_linked_folders_and_unusable_names_are_left_out(
    tmp_path, monkeypatch, compose_cfg, caplog
):
    """A data set is what lies under data.path, as DVC hashes it: a link to a file elsewhere (a checked-out repo's
    link to ~/.ssh/id_rsa would be copied, then pushed to the DVC remote) and a linked folder (DVC's hash does not
    look inside it: a change there would rerun nothing) are skipped, and so are names a line-based list or a UTF-8
    CSV cannot hold; a link to a file inside data.path is a copy of that file."""
    import os

    src = make_class_folders(tmp_path / "src", {"a": 4, "b": 4})
    outside = make_class_folders(tmp_path / "outside", {"c": 3})
    (tmp_path / "secret.txt").write_text("not an image, not under data.path")
    (src / "a" / "secret.png").symlink_to(tmp_path / "secret.txt")
    (src / "a" / "elsewhere.png").symlink_to(outside / "c" / "000.png")
    (src / "a" / "inside.png").symlink_to(src / "b" / "000.png")
    (src / ".secrets").mkdir()  # what fetch leaves out stays out when a link names it
    (src / ".secrets" / "token").write_text("API_KEY=hunter2")
    (src / "a" / "token.png").symlink_to(src / ".secrets" / "token")
    (src / "BG").mkdir()
    (src / "BG" / "bg.png").write_bytes((src / "b" / "001.png").read_bytes())
    (src / "b" / "from_bg.png").symlink_to(src / "BG" / "bg.png")
    (src / "notes.txt").write_text("beside the class folders")
    (src / "b" / "notes.png").symlink_to(src / "notes.txt")
    os.mkfifo(src / "a" / "pipe.png")
    (src / "c").symlink_to(outside / "c", target_is_directory=True)
    (src / "b" / "nested").symlink_to(outside / "c", target_is_directory=True)
    (src / "b" / "new\nline.png").write_bytes((src / "b" / "001.png").read_bytes())
    (src / "b" / os.fsdecode(b"latin\xe9.png")).write_bytes((src / "b" / "001.png").read_bytes())
    (src / "new\nclass").mkdir()
    (src / "new\nclass" / "000.png").write_bytes((src / "b" / "001.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=folder", f"data.path={src}", "data.split.sample_per_class=1", "data.exclude=[BG]")
    with caplog.at_level("WARNING"):
        fetch(cfg)
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("left out of"))
    assert "'link to a hidden file, or one outside the class folders taken': 3" in said, said
    assert "'pipe, socket or device: not a file': 1" in said, said
    images = tmp_path / "data/folder/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        *(f"a/{i:03d}.png" for i in range(4)),
        "a/inside.png",
        *(f"b/{i:03d}.png" for i in range(4)),
    ]
    assert not any(p.is_symlink() for p in images.rglob("*"))
    split(cfg)
    assert read_labels(tmp_path / "data/folder/split/labels.txt") == ["a", "b"]


@pytest.mark.parametrize(
    "layout",
    [{"a/sub/x.png": "main", "a/sub__x.png": "main"}, {"a/test__000.png": "main", "a/000.png": "test"}],
    ids=["a nested folder", "the test folder's prefix"],
)
def test_two_files_that_would_get_one_name_are_refused_before_anything_is_copied(
    layout, tmp_path, monkeypatch, compose_cfg
):
    for rel, folder in layout.items():
        (tmp_path / folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(tmp_path / folder / rel)
    (tmp_path / "main/b").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "main/b/000.png")
    monkeypatch.chdir(tmp_path)
    extra = [f"data.test_path={tmp_path / 'test'}"] if "test" in layout.values() else []
    with pytest.raises(ValueError, match=r"would both be copied to a/(sub|test)__.*png; rename one of them"):
        fetch(compose_cfg("data=folder", f"data.path={tmp_path / 'main'}", *extra))
    assert not (tmp_path / "data/folder/images").exists()


@pytest.mark.parametrize("classes", [{"a": 6, "b": 1}, {"a": 4, "b": 4, "c": 4, "d": 4}], ids=["one image", "4 x 4"])
def test_classes_too_small_to_stratify_are_one_line_from_the_command_line(classes, tmp_path):
    from ..conftest import ROOT, stage_main

    src = make_class_folders(tmp_path / "src", classes)
    args = [
        "--config-dir",
        str(ROOT / "conf"),
        "data=folder",
        f"data.path={src}",
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
    ]
    assert stage_main("fetch", args, tmp_path).returncode == 0
    done = stage_main("split", args, tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: cannot carve a test split stratified by class") and "has " in done.stderr
    assert not (tmp_path / "data/folder/split").exists()


def test_a_class_whose_training_images_are_all_unreadable_is_one_line_from_split(tmp_path):
    """data.test_path holds the test images; data.path's images of a class are all unreadable: nothing to carve val
    from is one line, not a traceback, and a class with test images but nothing to train on is refused."""
    from ..conftest import ROOT, stage_main

    train, test = tmp_path / "tr", make_class_folders(tmp_path / "te", {"a": 5, "b": 5})
    for name in ("a", "b"):
        (train / name).mkdir(parents=True)
        (train / name / "1.png").write_text("not an image")
    base = ["--config-dir", str(ROOT / "conf"), "data=folder", f"data.path={train}", f"data.test_path={test}"]
    base += ["hydra.run.dir=.", "hydra.output_subdir=null"]
    for says in ("no readable image left to carve a val split from", "class 'b' has images in the test split but none"):
        assert stage_main("fetch", base, tmp_path).returncode == 0
        done = stage_main("split", base, tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert done.stderr.startswith(f"error: {says}")
        assert not (tmp_path / "data/folder/split").exists()
        make_class_folders(train, {"a": 8})  # then class a can be trained on, b still cannot


def test_a_folder_with_fewer_than_two_classes_to_copy_is_one_line_and_the_last_images_stay(tmp_path):
    """Class folders that are all links (left out), one class, or none: refused by fetch, not passed on as an empty
    or one-class data set that replaces the images of the last fetch."""
    from ..conftest import ROOT, stage_main

    good = make_class_folders(tmp_path / "good", {"a": 4, "b": 4})
    linked, single, empty = tmp_path / "linked", make_class_folders(tmp_path / "single", {"a": 4}), tmp_path / "empty"
    linked.mkdir()
    empty.mkdir()
    for name in ("a", "b"):
        (linked / name).symlink_to(good / name, target_is_directory=True)
    base = ["--config-dir", str(ROOT / "conf"), "data=folder", "hydra.run.dir=.", "hydra.output_subdir=null"]
    assert stage_main("fetch", [*base, f"data.path={good}"], tmp_path).returncode == 0
    images = tmp_path / "data/folder/images"
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    for folder, count, why in ((linked, 0, " (left out: {'linked folder"), (single, 1, ""), (empty, 0, "")):
        done = stage_main("fetch", [*base, f"data.path={folder}"], tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert f"error: data.path {folder} has {count} class folder(s) with images to copy{why}" in done.stderr
        assert "needs at least 2" in done.stderr
        assert sorted(p.relative_to(images) for p in images.rglob("*")) == before


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029"], ids=["NEL", "LS", "PS"])
def test_names_holding_a_unicode_line_break_are_left_out(separator, tmp_path, monkeypatch, compose_cfg):
    """str.splitlines() ends a line at U+0085, U+2028 and U+2029: a class or a file named with one would be two
    lines of labels.txt or test.txt."""
    src = make_class_folders(tmp_path / "src", {"a": 4, "b": 4})
    (src / f"new{separator}class").mkdir()
    (src / f"new{separator}class" / "000.png").write_bytes((src / "b" / "001.png").read_bytes())
    (src / "b" / f"two{separator}lines.png").write_bytes((src / "b" / "001.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("data=folder", f"data.path={src}", "data.split.sample_per_class=1")
    fetch(cfg)
    images = tmp_path / "data/folder/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        *(f"a/{i:03d}.png" for i in range(4)),
        *(f"b/{i:03d}.png" for i in range(4)),
    ]
    split(cfg)
    assert read_labels(tmp_path / "data/folder/split/labels.txt") == ["a", "b"]


def test_links_that_lead_nowhere_are_counted_and_left_out(tmp_path, monkeypatch, compose_cfg, caplog):
    """A loop of links made pathlib's resolve() raise RuntimeError (Python 3.11): a traceback instead of a skip."""
    src = make_class_folders(tmp_path / "src", {"a": 4, "b": 4})
    (src / "a" / "self.png").symlink_to(src / "a" / "self.png")
    (src / "a" / "ping.png").symlink_to(src / "a" / "pong.png")
    (src / "a" / "pong.png").symlink_to(src / "a" / "ping.png")
    (src / "b" / "gone.png").symlink_to(tmp_path / "deleted.png")
    monkeypatch.chdir(tmp_path)
    caplog.set_level("WARNING")
    fetch(compose_cfg("data=folder", f"data.path={src}"))
    images = tmp_path / "data/folder/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        *(f"a/{i:03d}.png" for i in range(4)),
        *(f"b/{i:03d}.png" for i in range(4)),
    ]
    assert "'link that leads nowhere (a missing file or a loop of links)': 4" in caplog.text


@pytest.mark.parametrize("given", ["data", ".", "data/folder/images", "src/../data", "link"])
def test_a_folder_holding_or_inside_fetchs_own_output_is_refused_before_fetch(tmp_path, given):
    """data.path=data copied data/folder/ (the last fetch's output) into the new one as a class; a path inside it
    would be replaced by the copy it is read for."""
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    make_class_folders(tmp_path / "data" / "folder" / "images", {"a": 2, "b": 2})  # the last fetch's
    (tmp_path / "src").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")  # a link or a .. is followed, as fetch's copy follows it
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = stage_main("fetch", ["data=folder", f"data.path={given}"], tmp_path)
    how = "is inside" if given.startswith("data/") else "holds"
    said = f"error: data.path={given} {how} fetch's own output (data/folder): give the folder your images are in"
    assert done.returncode == 1 and done.stderr.startswith(said), done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
