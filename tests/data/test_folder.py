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


def _png_header(width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_absurd_dimensions_and_a_class_of_100000_empty_files_are_skipped_and_counted(tmp_path):
    root = make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    (root / "cat" / "huge.png").write_bytes(_png_header(100_000, 100_000))  # 10^10 pixels, claimed by 80 bytes
    (root / "cat" / "sliver.png").write_bytes(_png_header(1, 60_000))
    junk = root / "junk"
    junk.mkdir()
    for i in range(100_000):
        (junk / f"{i:06d}.jpg").touch()
    with pytest.raises(ValueError, match="junk has no readable images"):
        scan_image_folder(root)
    for i in range(3):  # a few good images beside them: the empty files are skipped and counted, never decoded
        Image.new("RGB", (8, 8), "blue").save(junk / f"good{i}.png")
    scan = scan_image_folder(root)
    assert len(scan.items) == 9
    assert scan.skipped_counts() == {"empty file": 100_000, "decompression bomb": 1, "corrupt (OSError)": 1}
