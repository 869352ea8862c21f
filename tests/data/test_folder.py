import io

import pytest
from PIL import Image

from imgclf.data.folder import scan_image_folder

from ..conftest import make_class_folders


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    root = make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    good = (root / "dog" / "000.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    (root / "cat" / "really_png.jpg").write_bytes(buf.getvalue())  # read by content, not extension

    scan = scan_image_folder(root)
    paths = [p for p, _ in scan.items]
    assert "cat/really_png.jpg" in paths
    assert len(scan.items) == 7
    assert scan.skipped_counts() == {"empty file": 1, "not an image": 1, "corrupt (OSError)": 1}
    assert {p for p, _ in scan.skipped} == {"cat/empty.png", "dog/notes.txt", "dog/truncated.png"}
    assert not any(".DS_Store" in p for p in paths + [p for p, _ in scan.skipped])


def test_fewer_than_two_classes_is_an_error(tmp_path):
    make_class_folders(tmp_path, {"only": 3})
    with pytest.raises(ValueError, match="at least 2"):
        scan_image_folder(tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has no readable images"):
        scan_image_folder(tmp_path)
