import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.contract import ServingSpec
from imgclf.data.datasets import build_loader, load_split
from imgclf.data.images import decode_image
from imgclf.data.split import (
    data_version,
    read_index,
    read_labels,
    read_manifest,
    sample_subset,
    stratified_split,
    write_split,
)
from imgclf.errors import BadInput

ITEMS = [(f"{c}/{i}.png", c) for c in "abcd" for i in range(50)]


def test_stratified_split_keeps_proportions_and_is_disjoint():
    splits = stratified_split(ITEMS, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 140, "val": 20, "test": 40}
    for name, size in (("train", 35), ("val", 5), ("test", 10)):
        assert Counter(lbl for _, lbl in splits[name]) == dict.fromkeys("abcd", size)
    paths = [p for s in splits.values() for p, _ in s]
    assert len(paths) == len(set(paths)) == len(ITEMS)
    assert stratified_split(ITEMS, 0.1, 0.2, seed=3) == splits
    assert stratified_split(ITEMS, 0.1, 0.2, seed=4) != splits


@pytest.mark.parametrize("val,test", [(0.0, 0.2), (0.5, 0.5), (0.2, 1.2)])
def test_bad_fractions_are_rejected(val, test):
    with pytest.raises(ValueError, match="data.split"):
        stratified_split(ITEMS, val, test, seed=0)


def test_sample_subset_picks_per_class_from_the_split():
    sample = sample_subset(ITEMS, 3, seed=0)
    assert Counter(lbl for _, lbl in sample) == dict.fromkeys("abcd", 3)
    assert set(sample) <= set(ITEMS)


def test_index_files_round_trip_and_the_data_version_follows_content(tmp_path):
    splits = stratified_split(ITEMS, 0.1, 0.2, seed=0)
    digests = {path: f"{i:064x}" for i, (path, _) in enumerate(ITEMS)}
    write_split(tmp_path / "split", splits, list("abcd"), 2, seed=0, digests=digests)
    assert read_index(tmp_path / "split" / "train.csv") == splits["train"]
    assert read_labels(tmp_path / "split" / "labels.txt") == list("abcd")
    assert len(read_index(tmp_path / "split" / "sample" / "test.csv")) == 8
    assert read_manifest(tmp_path / "split") == digests
    before = data_version(tmp_path / "split")
    write_split(tmp_path / "split", stratified_split(ITEMS, 0.1, 0.2, seed=1), list("abcd"), 2, seed=0, digests=digests)
    assert data_version(tmp_path / "split") != before  # another split
    write_split(tmp_path / "split", splits, list("abcd"), 2, seed=0, digests=digests)
    assert data_version(tmp_path / "split") == before
    edited = {**digests, ITEMS[0][0]: "f" * 64}  # same names and labels, one image's bytes changed
    write_split(tmp_path / "split", splits, list("abcd"), 2, seed=0, digests=edited)
    assert data_version(tmp_path / "split") != before


def test_a_fix_moves_no_other_image_in_or_out_of_a_sample(tmp_path):
    """relabel/<data>.csv is applied after the sample is drawn, as after the splits are: a model trained on the
    sample after a fix is evaluated on the same sample images (the fixed one with its new label)."""
    import functools

    from imgclf.data.relabel import apply_fixes

    splits = stratified_split(ITEMS, 0.1, 0.2, seed=0)
    digests = {path: f"{i:064x}" for i, (path, _) in enumerate(ITEMS)}
    write_split(tmp_path / "before", splits, list("abcd"), 3, seed=0, digests=digests)
    before = {n: read_index(tmp_path / "before" / "sample" / f"{n}.csv") for n in ("train", "val", "test")}
    moved, dropped = before["test"][0], before["train"][1]
    fixes = {moved[0]: "d" if moved[1] != "d" else "a", dropped[0]: "exclude"}
    fix = functools.partial(apply_fixes, fixes=fixes)
    write_split(tmp_path / "after", splits, list("abcd"), 3, seed=0, digests=digests, fix=fix)
    after = {n: read_index(tmp_path / "after" / "sample" / f"{n}.csv") for n in ("train", "val", "test")}
    assert after["test"] == sorted([(moved[0], fixes[moved[0]]), *before["test"][1:]])
    assert after["train"] == [row for row in before["train"] if row != dropped] and before["val"] == after["val"]
    assert (moved[0], fixes[moved[0]]) in read_index(tmp_path / "after" / "test.csv")
    assert dropped[0] not in {p for p, _ in read_index(tmp_path / "after" / "train.csv")}


def test_an_image_edited_in_place_is_what_the_next_load_sees(tiny_project):
    """The pack is keyed by content, not by the index (names): new pixels under an old name reach training."""
    from imgclf.data.folder import scan_image_folder

    first = load_split("data/tiny", "train", "full", spec(8))
    path = tiny_project / "data/tiny/images" / read_index("data/tiny/split/train.csv")[0][0]
    Image.new("RGB", (8, 8), (7, 7, 7)).save(path)  # same name, new pixels
    with pytest.raises(BadInput, match="changed since the split stage ran"):  # a new pack checks every file
        load_split("data/tiny", "train", "full", spec(9))
    with pytest.raises(BadInput, match="changed since the split stage ran"):  # the pack made before: served as it was
        load_split("data/tiny", "train", "full", spec(8))
    older = tiny_project / "older.png"  # the same, moved into place with an older time: mv, cp -p, rsync -a
    Image.new("RGB", (8, 8), (9, 9, 9)).save(older)
    os.utime(older, ns=(0, 0))
    older.replace(path)
    with pytest.raises(BadInput, match="changed since the split stage ran"):
        load_split("data/tiny", "train", "full", spec(8))
    Image.new("RGB", (8, 8), (7, 7, 7)).save(path)
    scan = scan_image_folder(tiny_project / "data/tiny/images")  # what the split stage reruns on
    splits = {s: read_index(f"data/tiny/split/{s}.csv") for s in ("train", "val", "test")}
    write_split(
        tiny_project / "data/tiny/split", splits, scan.class_names, 4, 0, {p: i.sha256 for p, i in scan.info.items()}
    )
    second = load_split("data/tiny", "train", "full", spec(8))
    assert not torch.equal(first.batch([0]), second.batch([0]))
    assert torch.equal(second.batch([0])[0], torch.full((3, 8, 8), 7, dtype=torch.uint8))
    assert torch.equal(first.batch(range(1, 36)), second.batch(range(1, 36)))


def spec(size: int, stored: int | None = None, resize: str = "crop") -> ServingSpec:
    return ServingSpec(["a", "b", "c"], size, [0.5] * 3, [0.25] * 3, "bilinear", stored, resize)


def test_batches_from_the_mapped_pack_equal_the_images_in_memory_in_any_order(tiny_project):
    ds = load_split("data/tiny", "train", "full", spec(16))
    whole = torch.from_numpy(np.array(ds.images))  # a copy: the mapped pack is read-only
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    assert torch.equal(ds.batch(order), whole[order])
    cropped = load_split("data/tiny", "train", "full", spec(12, stored=16))  # evaluation view: centre 12 of 16
    assert torch.equal(cropped.batch(order[:5]), whole[order[:5], :, 2:14, 2:14])
    assert load_split("data/tiny", "train", "full", spec(12, 16), crop=False).batch([0]).shape[-1] == 16


def test_a_mapped_pack_lets_its_pages_go_as_batches_are_read(tiny_project, monkeypatch):
    import mmap

    from imgclf.data import datasets

    ds = load_split("data/tiny", "train", "full", spec(16))
    released = []
    monkeypatch.setattr(datasets, "RELEASE_BYTES", 2 * 3 * 16 * 16)  # two images' worth
    fake_map = type("Map", (), {"madvise": lambda self, advice: released.append(advice)})()
    monkeypatch.setattr(ds.images, "_mmap", fake_map)
    ds.batch([0])
    assert released == []
    ds.batch([1, 2])
    assert released == [mmap.MADV_DONTNEED]  # RSS stays flat however large the pack


def test_a_photo_is_decoded_as_a_viewer_shows_it_turned_by_exif_and_16_bit_scaled(tmp_path):
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:, :4, 0], stored[:, 4:, 2] = 255, 255  # red left half, blue right half, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone's portrait photo: turn 90 degrees clockwise to show it
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    shown = decode_image(tmp_path / "portrait.jpg", 8, "nearest", resize="squash")
    assert shown[:3, :, 0].min() > 200 and shown[5:, :, 2].min() > 200  # red on top, blue below, as shown
    gradient = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(gradient).save(tmp_path / "depth.png")  # a 16-bit grayscale PNG (microscopes, depth maps)
    pixels = decode_image(tmp_path / "depth.png", 8, "nearest", resize="squash")[..., 0].ravel()
    assert pixels[0] == 0 and pixels[-1] == 255 and np.all(np.diff(pixels.astype(int)) >= 0)  # not clipped white
    assert abs(int(pixels[32]) - 130) <= 2
    # a float TIFF (microscopy, remote sensing) holds 0 to 1, or 0 to 255: PIL's convert made the first black
    for top in (1.0, 255.0):
        Image.fromarray(np.linspace(0, top, 64, dtype=np.float32).reshape(8, 8), "F").save(tmp_path / "f.tif")
        shown = decode_image(tmp_path / "f.tif", 8, "nearest", resize="squash")[..., 0].ravel()
        assert shown[0] == 0 and shown[-1] == 255 and abs(int(shown[32]) - 130) <= 2, top


def test_crop_keeps_the_centre_of_the_shorter_side_and_squash_keeps_everything(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255  # a white band on the left quarter of a 2:1 image
    Image.fromarray(image).save(tmp_path / "wide.png")
    cropped = decode_image(tmp_path / "wide.png", 10, "nearest", resize="crop")
    squashed = decode_image(tmp_path / "wide.png", 10, "nearest", resize="squash")
    assert cropped.shape == squashed.shape == (10, 10, 3)
    assert cropped.max() == 0  # shorter side to 10 px: 20 px wide, the centre 10 px is all black
    assert squashed[:, :2].min() == 255 and squashed[:, 3:].max() == 0  # the band squashed to 2.5 of 10 px
    with pytest.raises(BadInput, match="unknown model.resize 'stretch'; choose one of: crop, squash"):
        decode_image(tmp_path / "wide.png", 10, resize="stretch")


def test_load_split_decodes_resizes_and_batches(tiny_project):
    ds = load_split("data/tiny", "train", "full", spec(16))
    assert ds.images.shape == (36, 3, 16, 16) and ds.images.dtype == np.uint8
    assert isinstance(ds.images, np.memmap)  # the pack is mapped, not read whole
    assert sorted(Counter(ds.labels.tolist()).values()) == [12, 12, 12]
    sample = load_split("data/tiny", "train", "sample", spec(16))
    assert len(sample) == 12
    images, labels = next(iter(build_loader(ds, 8, shuffle=False)))
    assert images.shape == (8, 3, 16, 16) and torch.equal(labels, ds.labels[:8])
    cached = sorted(p.name for p in (tiny_project / "data/tiny/cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("full-train-16px-") and cached[1].startswith("sample-train-16px-")
    np.save(tiny_project / "data/tiny/cache" / cached[0], np.zeros((36, 3, 16, 16), np.uint8))
    assert load_split("data/tiny", "train", "full", spec(16)).images.sum() == 0  # served from the cache
    assert load_split("data/tiny", "train", "full", spec(20)).images.shape[-1] == 20  # new size, new pack
    with pytest.raises(FileNotFoundError, match="run the split stage"):
        load_split("data/missing", "train", "full", spec(16))


def test_a_truncated_pack_is_never_read_as_valid_and_is_decoded_again(tiny_project, caplog):
    whole = np.array(load_split("data/tiny", "train", "full", spec(16)).images)
    (pack,) = (tiny_project / "data/tiny/cache").glob("full-train-16px-*.npy")
    size = pack.stat().st_size
    with pack.open("r+b") as f:  # a disk error, a killed copy: the file under the final name is cut short
        f.truncate(size - 1000)
    again = load_split("data/tiny", "train", "full", spec(16))
    assert "is damaged" in caplog.text and "decoding the images again" in caplog.text
    assert pack.stat().st_size == size and np.array_equal(np.array(again.images), whole)


def test_an_index_edited_by_hand_with_a_missing_file_is_one_line(tiny_project):
    from imgclf.errors import BadInput

    with (tiny_project / "data/tiny/split/train.csv").open("a") as f:
        f.write("a/999.png,a\n")
    with pytest.raises(BadInput) as err:
        load_split("data/tiny", "train", "full", spec(16))
    assert (
        str(err.value)
        == "a/999.png is indexed but missing from the split's manifest.csv; rerun split (dvc repro split)"
    )


def test_a_pack_left_half_written_by_a_killed_writer_is_removed(tiny_project):
    import subprocess

    from imgclf.contract import ServingSpec

    dead = subprocess.Popen(["true"])
    dead.wait()
    cache = tiny_project / "data/tiny/cache"
    cache.mkdir(parents=True, exist_ok=True)
    orphan = cache / f".full-train-48px-0123456789abcdef.npy.tmp{dead.pid}"  # another key: never written again
    orphan.write_bytes(b"\0" * 4096)
    load_split(tiny_project / "data/tiny", "train", "full", ServingSpec(["a", "b", "c"], 8, [0.5] * 3, [0.5] * 3))
    assert not orphan.exists() and list(cache.glob("*.npy"))


def test_16_bit_grayscale_is_scaled_in_bands_exactly_as_in_one_pass_without_a_full_size_copy(monkeypatch):
    import tracemalloc

    from imgclf.data import images

    rng = np.random.default_rng(0)
    wide = rng.integers(-70000, 140000, (37, 23), dtype=np.int32)  # mode I: below 0 and past 16 bits, clipped
    for img in (Image.fromarray(wide, "I"), Image.fromarray(np.clip(wide, 0, 65535).astype(np.uint16))):
        expected = (np.clip(np.asarray(img), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        monkeypatch.setattr(images, "BAND_PIXELS", 50)  # bands of 2 rows, and a last band of 1
        assert np.array_equal(np.asarray(images.as_shown(img)), expected), img.mode
    monkeypatch.setattr(images, "BAND_PIXELS", 1 << 16)
    big = Image.fromarray(np.zeros((2000, 1000), np.int32), "I")  # 8 MB as its own mode
    tracemalloc.start()
    images.as_shown(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000  # the 2 MB result and bands, no 8 MB copy (one pass held 22 MB of arrays)
    # 32-bit grayscale takes 9 bytes a pixel to decode (its own 4, the 8-bit scaling, RGB's 4): fewer pixels fit
    import io

    assert images.MAX_PIXELS_32_BIT_GRAY == images.MAX_PIXELS * 8 // 9
    monkeypatch.setattr(images, "MAX_PIXELS_32_BIT_GRAY", 99)
    for mode, refused in (("I", True), ("I;16", False)):
        stored = io.BytesIO()
        Image.new(mode, (10, 10)).save(stored, format="TIFF" if mode == "I" else "PNG")
        if refused:
            with pytest.raises(images.ImageTooLarge, match="image of 10 x 10 pixels is over the limit of 99 pixels"):
                images.decode_image(io.BytesIO(stored.getvalue()), 8, "nearest")
        else:
            assert images.decode_image(io.BytesIO(stored.getvalue()), 8, "nearest").shape == (8, 8, 3)


def test_an_edit_to_the_decoding_code_makes_new_packs(tmp_path):
    """Packs were keyed by a version tag bumped by hand: after an edit to images.py, the stages DVC reran (the file is
    their dependency) read the pixels the old code made."""
    import shutil
    import subprocess
    import sys

    from imgclf.data.datasets import decoder

    from ..conftest import ROOT

    shutil.copytree(ROOT / "src" / "imgclf", tmp_path / "imgclf")
    images = tmp_path / "imgclf" / "data" / "images.py"
    images.write_text(images.read_text().replace("def decode_image(", "def decode_image(  # edited\n", 1))
    probe = "from imgclf.data.datasets import decoder; print(decoder())"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    edited = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert edited.stdout.strip().startswith("pillow-") and edited.stdout.strip() != decoder()


def test_more_class_folders_than_a_classifier_takes_are_one_line_before_an_image_is_read(tmp_path, monkeypatch):
    """train, export, predict and serve refuse more than MAX_CLASSES classes; split refuses them first, without
    opening the images of a folder that cannot be trained on."""
    from imgclf.data import folder
    from imgclf.stages import split

    from ..conftest import ROOT, make_class_folders, stage_main

    make_class_folders(tmp_path / "data" / "tiny" / "images", dict.fromkeys("abcd", 1))
    monkeypatch.setattr(split, "MAX_CLASSES", 3)  # the real cap, 131,072 folders, is the same test at length

    def read(*args, **kwargs):
        raise AssertionError("an image was read")

    monkeypatch.setattr(folder, "parallel_map", read)
    done = stage_main("split", ["--config-dir", str(ROOT / "conf"), "data.name=tiny"], tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: data/tiny/images has 4 class sub-folders; a classifier has 2 to 3\n"
    assert not (tmp_path / "data" / "tiny" / "split").exists()
