import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from imgclf.data.download import DownloadError, download, extract, parse_checksum


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_parse_checksum_forms():
    assert parse_checksum("a" * 32) == ("md5", "a" * 32)
    assert parse_checksum("sha256:" + "B" * 64) == ("sha256", "b" * 64)
    with pytest.raises(ValueError, match="md5 \\(32 hex\\) or sha256 \\(64 hex\\)"):
        parse_checksum("1234")


def test_mirror_down_then_next_mirror_and_idempotent(http_server, tmp_path):
    base, www, requests = http_server
    (www / "f.bin").write_bytes(b"payload")
    path = download("f.bin", [f"{base}/down", base], tmp_path / "dl", md5(b"payload"))
    assert path.read_bytes() == b"payload"
    assert requests == ["/down/f.bin", "/f.bin"]
    download("f.bin", [base], tmp_path / "dl", md5(b"payload"))
    assert len(requests) == 2  # verified file reused, not fetched again


def test_without_a_checksum_a_copy_kept_from_before_is_downloaded_again(http_server, tmp_path):
    """Nothing verifies it: a mirror's error page saved as the file the first time would be read for ever."""
    base, www, requests = http_server
    (www / "f.bin").write_bytes(b"<html>Rate limited</html>")
    download("f.bin", [base], tmp_path / "dl")
    (www / "f.bin").write_bytes(b"payload")
    assert download("f.bin", [base], tmp_path / "dl").read_bytes() == b"payload"
    assert requests == ["/f.bin", "/f.bin"]


def test_checksum_mismatch_deletes_and_names_file(http_server, tmp_path):
    base, www, _ = http_server
    (www / "f.bin").write_bytes(b"tampered")
    says = f"from any mirror: {base}/f.bin: md5 is {md5(b'tampered')}, expected {md5(b'payload')}"
    with pytest.raises(DownloadError, match=says):
        download("f.bin", [base], tmp_path / "dl", md5(b"payload"))
    assert not list((tmp_path / "dl").iterdir())


def test_a_mirror_serving_the_wrong_bytes_is_passed_over_for_the_next(http_server, tmp_path, caplog):
    """A mirror answering 200 with an HTML page (a login wall, a moved file) is one mirror's fault, not the file's."""
    base, www, requests = http_server
    (www / "html").mkdir()
    (www / "html" / "f.bin").write_text("<html><body>This file has moved</body></html>")
    (www / "f.bin").write_bytes(b"payload")
    caplog.set_level("WARNING")
    path = download("f.bin", [f"{base}/html", base], tmp_path / "dl", md5(b"payload"))
    assert path.read_bytes() == b"payload" and requests == ["/html/f.bin", "/f.bin"]
    assert f"{base}/html/f.bin: md5 is " in caplog.text and "trying the next mirror" in caplog.text
    (www / "html" / "g.bin").write_text("<html><body>Sign in</body></html>")
    with pytest.raises(DownloadError) as err:  # every mirror tried is named, with what was wrong with it
        download("g.bin", [f"{base}/html", f"{base}/down"], tmp_path / "dl2", md5(b"payload"))
    assert f"{base}/html/g.bin: md5 is " in str(err.value) and f"{base}/down/g.bin: " in str(err.value)


def test_a_file_failing_its_checksum_is_replaced_only_by_a_verified_download(http_server, tmp_path):
    base, www, _ = http_server
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "f.bin").write_bytes(b"the user's own")
    with pytest.raises(DownloadError, match="could not download f.bin from any mirror"):
        download("f.bin", [f"{base}/down"], tmp_path / "dl", md5(b"payload"))
    assert (tmp_path / "dl" / "f.bin").read_bytes() == b"the user's own"  # no mirror answered: nothing lost
    (www / "f.bin").write_bytes(b"payload")
    download("f.bin", [base], tmp_path / "dl", md5(b"payload"))
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["f.bin"]
    assert (tmp_path / "dl" / "f.bin").read_bytes() == b"payload"


def test_truncated_download_is_an_error_not_a_short_file(http_server, tmp_path):
    base, www, _ = http_server
    (www / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(DownloadError, match="truncated: got 500 of 1000 bytes"):
        download("f.bin", [f"{base}/short"], tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir())


def test_no_mirror_serves_it(http_server, tmp_path):
    base, _, _ = http_server
    with pytest.raises(DownloadError, match="could not download missing.bin from any mirror"):
        download("missing.bin", [f"{base}/down", base], tmp_path / "dl")


def test_extract_refuses_escaping_members(tmp_path):
    bad_tar = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_tar, "w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="outside"):
        extract(bad_tar, tmp_path / "out")
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("../../evil.txt", "bad")
    with pytest.raises(ValueError, match="outside"):
        extract(bad_zip, tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def _tar(path, name, kind, linkname=""):
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        if kind == tarfile.REGTYPE:
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
        else:
            tf.addfile(info)
    return path


def _zip(path, name, symlink=False):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fine.txt", "ok")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777) << 16  # S_IFLNK: what `zip --symlinks` writes
        zf.writestr(info, "/etc/passwd" if symlink else "bad")
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: _tar(p / "abs.tar", "/tmp/imgclf-evil.txt", tarfile.REGTYPE), "outside"),
        (lambda p: _tar(p / "dots.tar", "a/../../evil.txt", tarfile.REGTYPE), "outside"),
        (lambda p: _tar(p / "sym.tar", "link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (lambda p: _tar(p / "hard.tar", "hard", tarfile.LNKTYPE, "fine.txt"), "is a link"),
        (lambda p: _tar(p / "chr.tar", "dev/null2", tarfile.CHRTYPE), "device or pipe"),
        (lambda p: _tar(p / "blk.tar", "dev/sda9", tarfile.BLKTYPE), "device or pipe"),
        (lambda p: _tar(p / "fifo.tar", "pipe", tarfile.FIFOTYPE), "device or pipe"),
        (lambda p: _zip(p / "abs.zip", "/tmp/imgclf-evil.txt"), "outside"),
        (lambda p: _zip(p / "dots.zip", "../evil.txt"), "outside"),
        (lambda p: _zip(p / "sym.zip", "link", symlink=True), "is a link"),
    ],
)
def test_extract_refuses_each_unsafe_member_and_writes_nothing(tmp_path, make, says):
    archive = make(tmp_path)
    with pytest.raises(ValueError, match=says):
        extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # refused before anything, the good member included
    assert not Path("/tmp/imgclf-evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_a_zip_inside_the_kaggle_zip_is_checked_too(tmp_path):
    from imgclf.data.dogs_vs_cats import unpack

    inner = _zip(tmp_path / "train.zip", "../../escaped.txt")  # Kaggle's layout: train.zip inside the download
    outer = tmp_path / "dogs-vs-cats.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "train.zip")
    with pytest.raises(ValueError, match="train.zip' would be written outside|'../../escaped.txt' would be written"):
        unpack(outer, tmp_path / "work")
    assert not any(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_that_would_not_fit_on_the_disk_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch, kind):
    """A small archive of zeros declares gigabytes: refused in one line when its members would not fit in the free
    space, before the first is written (the disk filled, then the copy failed half-way)."""
    import collections
    import io
    import tarfile
    import zipfile

    from imgclf.data import download

    zeros = b"\0" * 3_000_000  # deflates to a few KB
    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("train/cat.1.jpg", zeros)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("train/cat.1.jpg")
            info.size = len(zeros)
            tf.addfile(info, io.BytesIO(zeros))
    assert archive.stat().st_size < 100_000
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2_000_000, 2_000_000))
    with pytest.raises(download.BadInput, match=r"bomb\..* unpacks to 0\.00 GB and .* has 0\.00 GB free: free some"):
        download.extract(archive, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*"))
    monkeypatch.undo()
    assert (download.extract(archive, tmp_path / "out") / "train/cat.1.jpg").stat().st_size == len(zeros)
