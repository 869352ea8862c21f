import hashlib
import io
import tarfile
import zipfile

import pytest

from imgclf.data.download import ChecksumError, DownloadError, download, extract, parse_checksum


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


def test_checksum_mismatch_deletes_and_names_file(http_server, tmp_path):
    base, www, _ = http_server
    (www / "f.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=f"f.bin: md5 is {md5(b'tampered')}, expected {md5(b'payload')}"):
        download("f.bin", [base], tmp_path / "dl", md5(b"payload"))
    assert not list((tmp_path / "dl").iterdir())


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
