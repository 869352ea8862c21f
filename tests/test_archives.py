"""The zip archives torch reads are checked before it reads them (imgclf.archives): a `.pt` checkpoint, a `.pt2`
program or the sample inputs inside one whose entries are compressed, share their bytes or are too many is refused
in one line by `imgclf predict` and by serve's model switch, before torch inflates anything. The crafted files are
small bombs: read unchecked, each costs about 100 MB, not the gigabytes a real one would."""

import io
import shutil
import struct
import zipfile

import pytest
import torch

from imgclf.archives import MAX_ENTRIES, ArchiveRefused, checked_zip

from .conftest import console, serve_client

BOMB = 100 << 20  # bytes of zeros a crafted entry unpacks to, from about 100 KB deflated
END = struct.Struct("<4s4H2LH")


def deflated(archive: bytes) -> bytes:
    """An archive torch.save wrote, its tensors' entries deflated (what torch.load inflates without asking)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            kind = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=kind)
    return out.getvalue()


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def sharing(copies: int) -> bytes:
    """An archive of one stored 1 MB entry listed `copies` times in its directory, each listing the same bytes: a
    reader that trusts the directory loads `copies` MB from a 1 MB file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x/data/00", b"\0" * (1 << 20))
    data = buffer.getvalue()
    start, end = data.index(b"PK\x01\x02"), data.index(b"PK\x05\x06")
    listed = b"".join(data[start:end].replace(b"x/data/00", b"x/data/%02d" % i) for i in range(copies))
    return data[:start] + listed + END.pack(b"PK\x05\x06", 0, 0, copies, copies, len(listed), start, 0)


def many_entries(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for i in range(count):
            z.writestr(f"x/{i}", b"")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile(trained_project, tmp_path_factory):
    """name -> (a crafted .pt, what the refusal says), made from the trained checkpoint (each loadable by torch)."""
    folder = tmp_path_factory.mktemp("hostile")
    ckpt = torch.load(trained_project / "models/model.pt", weights_only=True)
    files = {
        "compressed": (deflated(saved({**ckpt, "pad": torch.zeros(BOMB, dtype=torch.uint8)})), "compressed entries"),
        "shared": (sharing(40), "its entries add up to 41,943,040 bytes, more than the file's"),
        "too_many": (many_entries(MAX_ENTRIES + 1), f"it holds {MAX_ENTRIES + 1:,} entries; at most"),
    }
    made = {}
    for name, (data, says) in files.items():
        (folder / f"{name}.pt").write_bytes(data)
        made[name] = (folder / f"{name}.pt", says)
    weights = (trained_project / "models/model.pt").stat().st_size
    assert (folder / "compressed.pt").stat().st_size < weights + BOMB / 500  # 100 MB more in 200 KB: a bomb, in small
    return made


def test_predict_and_serve_refuse_an_archive_torch_would_read_into_more_than_the_file(
    trained_project, hostile, tmp_path
):
    from imgclf.cli import predict

    image = next((trained_project / "data/tiny/images/a").iterdir())
    for path, says in hostile.values():
        done = console(predict, [str(image), "--model", str(path)], tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"error: {path}: refused: ") and says in done.stderr, done.stderr
    client = serve_client(trained_project, tmp_path / "cache", [path.parent])
    for path, says in hostile.values():
        answer = client.post("/api/model", json={"model": str(path)})
        assert answer.status_code == 400 and says in answer.json()["error"], answer.text
    assert client.get("/api/model").json()["model"] == str(trained_project / "models/export")  # still served


def test_a_program_whose_sample_inputs_are_compressed_is_refused(trained_project, tmp_path):
    """Every entry of the .pt2 stored, as the program's own check asks; the sample inputs inside, an archive of their
    own, deflated: torch.export.load inflated them (2 GB from a 1.95 MB file), and so did the check itself."""
    from imgclf.cli import predict

    folder = tmp_path / "model"
    shutil.copytree(trained_project / "models/export", folder)
    (folder / "run.json").unlink()  # made by hand: no record of its files, so the check under test refuses it
    (folder / "model.pt2").unlink()
    with (
        zipfile.ZipFile(trained_project / "models/export/model.pt2") as zin,
        zipfile.ZipFile(folder / "model.pt2", "w") as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = deflated(saved(((torch.zeros(BOMB, dtype=torch.uint8),), {})))
            zout.writestr(info.filename, data)  # stored
    assert (folder / "model.pt2").stat().st_size < BOMB / 20
    image = next((trained_project / "data/tiny/images/a").iterdir())
    done = console(predict, [str(image), "--model", str(folder / "model.pt2")], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {folder / 'model.pt2'}: refused: its sample inputs: it holds compressed ")
    client = serve_client(trained_project, tmp_path / "cache", [folder])
    answer = client.post("/api/model", json={"model": str(folder / "model.pt2")})
    assert answer.status_code == 400 and "its sample inputs: it holds compressed" in answer.json()["error"]


def test_a_directory_too_large_to_parse_is_refused_from_its_end_record():
    """zipfile reads the whole directory and makes an object per entry: its size is checked first."""
    claims = END.pack(b"PK\x05\x06", 0, 0, 1, 1, 100 << 20, 0, 0)
    with pytest.raises(ArchiveRefused, match="its directory is 104,857,600 bytes, more than 20,000 entries"):
        checked_zip(io.BytesIO(b"PK\x03\x04" + claims))
    with pytest.raises(zipfile.BadZipFile):  # an end record followed by a comment: no archive torch writes
        checked_zip(io.BytesIO(saved({"t": torch.zeros(2)})[:-2] + b"\x01\x00x"))
    checked_zip(io.BytesIO(saved({"t": torch.zeros(2)}))).close()  # what torch.save writes passes
