"""MNIST and CIFAR-10 fetched from a loopback server in their exact upstream formats, then split."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from imgclf.data.mnist import read_idx
from imgclf.data.split import read_index, read_labels
from imgclf.errors import BadInput, MissingInput
from imgclf.stages.fetch import fetch
from imgclf.stages.split import split

RNG = np.random.default_rng(0)


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_mnist(www, n_train=100, n_test=20):
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        data[prefix] = (images, labels)
        (www / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_gz(images, 2051))
        (www / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_gz(labels, 2049))
    return data


def checksums(www, names):
    return "{" + ",".join(f"{n}:{hashlib.md5((www / n).read_bytes()).hexdigest()}" for n in names) + "}"


def test_mnist_fetch_and_split_keep_official_test(http_server, tmp_path, monkeypatch, compose_cfg):
    base, www, _ = http_server
    data = write_mnist(www)
    names = [p.name for p in www.iterdir()]
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=mnist",
        f"data.mirrors=[{base}/down,{base}]",
        f"data.checksums={checksums(www, names)}",
        "data.split.sample_per_class=1",
    )
    fetch(cfg)
    split(cfg)
    split_dir = tmp_path / "data/mnist/split"
    test = read_index(split_dir / "test.csv")
    assert len(test) == 20 and all("/test_" in p for p, _ in test)
    assert len(read_index(split_dir / "val.csv")) == 10 and len(read_index(split_dir / "train.csv")) == 90
    assert read_labels(split_dir / "labels.txt") == [str(d) for d in range(10)]
    # pixels and labels round-trip
    images, labels = data["train"]
    png = np.asarray(Image.open(tmp_path / f"data/mnist/images/{labels[7]}/train_00007.png"))
    np.testing.assert_array_equal(png, images[7])


def test_mnist_truncated_or_mismatched_files_fail(tmp_path):
    full = idx_gz(np.zeros((5, 28, 28)), 2051)
    raw = gzip.decompress(full)
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match="header says 5x28x28 = 3920 bytes of data, file has 3820"):
        read_idx(tmp_path / "short.gz", 2051)
    (tmp_path / "cut.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt gzip"):
        read_idx(tmp_path / "cut.gz", 2051)
    (tmp_path / "labels.gz").write_bytes(idx_gz(np.zeros(5), 2049))
    with pytest.raises(ValueError, match="bad IDX magic 00000801, expected 00000803"):
        read_idx(tmp_path / "labels.gz", 2051)


def test_idx_dimensions_whose_product_overflows_int64_are_one_line(tmp_path):
    """2**31 x 2**31 x 4 is 2**64, which numpy's int64 product makes 0: an empty file then passed the size check."""
    (tmp_path / "huge.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 2**31, 2**31, 4)))
    with pytest.raises(BadInput, match="huge.gz: header declares 2147483648 images of 2147483648x4; MNIST holds at"):
        read_idx(tmp_path / "huge.gz", 2051)
    (tmp_path / "short.gz").write_bytes(gzip.compress(struct.pack(">II", 2051, 5)))  # two of three dimensions
    with pytest.raises(BadInput, match="short.gz: 8 bytes, too short for the header of 3 dimensions it announces"):
        read_idx(tmp_path / "short.gz", 2051)


def cifar_tar(path, per_batch=12, classes=("plane", "car", "bird"), str_keys=False, poison=None):
    """cifar-10-python.tar.gz layout: Python-2 style pickles with bytes keys (or, as some mirrors re-pickle them
    under Python 3, str keys), rows of R, G, B planes; `poison` ({batch: {key: value}}) replaces entries."""
    batches = {}
    key = (lambda k: k.decode()) if str_keys else (lambda k: k)
    with tarfile.open(path, "w:gz") as tf:

        def add(name, obj):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))

        names = list(classes) if str_keys else [c.encode() for c in classes]
        add("batches.meta", {key(b"label_names"): names, key(b"num_vis"): 3072})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            rows = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = [i % len(classes) for i in range(per_batch)]
            batches[name] = (rows, labels)
            entries = {b"data": rows, b"labels": labels, b"batch_label": name.encode(), **(poison or {}).get(name, {})}
            add(name, {key(k): v for k, v in entries.items()})
    return batches


def test_cifar10_fetch_from_mirror_and_from_archive(http_server, tmp_path, monkeypatch, compose_cfg):
    base, www, _ = http_server
    batches = cifar_tar(www / "cifar-10-python.tar.gz")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=cifar10",
        f"data.mirrors=[{base}]",
        f"data.checksums={checksums(www, ['cifar-10-python.tar.gz'])}",
        "data.split.sample_per_class=1",
    )
    fetch(cfg)
    split(cfg)
    split_dir = tmp_path / "data/cifar10/split"
    assert read_labels(split_dir / "labels.txt") == ["bird", "car", "plane"]
    assert len(read_index(split_dir / "test.csv")) == 12
    assert sum(len(read_index(split_dir / f"{s}.csv")) for s in ("train", "val")) == 60
    rows, labels = batches["data_batch_2"]
    png = np.asarray(Image.open(tmp_path / "data/cifar10/images/car/data_batch_2_00001.png"))
    assert labels[1] == 1
    np.testing.assert_array_equal(png[..., 0], rows[1][:1024].reshape(32, 32))  # R plane first
    np.testing.assert_array_equal(png[..., 2], rows[1][2048:].reshape(32, 32))

    offline = compose_cfg(
        "data=cifar10",
        "data.mirrors=[]",
        f"data.archive={www / 'cifar-10-python.tar.gz'}",
        "data.checksums={cifar-10-python.tar.gz:" + "0" * 32 + "}",
    )
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: md5 is [0-9a-f]{32}, expected 0{32}"):
        fetch(offline)


def test_each_cifar_fetch_reads_only_its_own_archive(tmp_path, monkeypatch, compose_cfg):
    """An earlier archive's batches are not there to fill in for a missing one, and no scratch folder is kept."""
    good, partial = tmp_path / "good/cifar-10-python.tar.gz", tmp_path / "partial/cifar-10-python.tar.gz"
    good.parent.mkdir()
    partial.parent.mkdir()
    cifar_tar(good)
    with tarfile.open(good) as full, tarfile.open(partial, "w:gz") as part:
        for member in full.getmembers():
            if not member.name.endswith("data_batch_5"):
                part.addfile(member, full.extractfile(member))
    monkeypatch.chdir(tmp_path)
    for archive in (good, partial):
        cfg = compose_cfg(
            "data=cifar10", f"data.archive={archive}", f"data.checksums={checksums(archive.parent, [archive.name])}"
        )
        if archive == good:
            fetch(cfg)
            continue
        with pytest.raises(MissingInput, match="data_batch_5 missing from .*; the archive is incomplete"):
            fetch(cfg)
    assert len(list((tmp_path / "data/cifar10/images").rglob("*.png"))) == 72  # the good fetch's, kept
    assert list((tmp_path / "data/cifar10/downloads").iterdir()) == []


def test_cifar10_repickled_under_python3_reads_the_same(tmp_path):
    from imgclf.data.cifar10 import read_batch, read_label_names
    from imgclf.data.download import extract

    for str_keys in (False, True):
        batches = cifar_tar(tmp_path / f"c{str_keys}.tar.gz", str_keys=str_keys)
        batch_dir = extract(tmp_path / f"c{str_keys}.tar.gz", tmp_path / f"x{str_keys}") / "cifar-10-batches-py"
        assert read_label_names(batch_dir) == ["plane", "car", "bird"]
        images, labels = read_batch(batch_dir / "test_batch")
        assert list(labels) == batches["test_batch"][1]
        np.testing.assert_array_equal(images[0, ..., 1], batches["test_batch"][0][0][1024:2048].reshape(32, 32))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a pickle", r"test_batch: not a readable CIFAR-10 pickle \(UnpicklingError"),
        (pickle.dumps([1, 2]), "test_batch: holds a list, expected a dict of data, labels"),
        (pickle.dumps({"data": []}), "test_batch: no labels entry; it has data"),
    ],
)
def test_malformed_cifar_batch_is_one_line_naming_the_file(tmp_path, content, message):
    from imgclf.data.cifar10 import read_batch
    from imgclf.errors import BadInput

    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(BadInput, match=message) as error:
        read_batch(tmp_path / "test_batch")
    assert "\n" not in str(error.value)


def test_corrupt_archive_and_csv_are_one_line(tmp_path):
    from imgclf.data.download import extract
    from imgclf.errors import BadInput

    cifar_tar(tmp_path / "full.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "full.tar.gz").read_bytes()[:3000])  # a truncated download
    with pytest.raises(BadInput, match="cut.tar.gz: corrupt or truncated archive"):
        extract(tmp_path / "cut.tar.gz", tmp_path / "out")
    (tmp_path / "train.csv").write_text("path,label\na/1.png,a\nb/2.png\n")
    with pytest.raises(BadInput, match="train.csv line 3: expected 2 fields \\(path,label\\), got 1"):
        read_index(tmp_path / "train.csv")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_carrying_code_is_refused_before_it_runs(tmp_path):
    from imgclf.data.cifar10 import read_batch
    from imgclf.errors import BadInput

    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Payload(marker)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(BadInput, match=r"test_batch: .*refused to load posix.system: not part of a CIFAR-10 batch"):
        read_batch(tmp_path / "test_batch")
    assert not marker.exists()
    pickle.loads((tmp_path / "test_batch").read_bytes())  # the unsafe way runs it: the payload is real
    assert marker.exists()


def test_sigkill_during_a_download_leaves_nothing_trusted_and_the_rerun_completes(http_server, tmp_path, project_env):
    import subprocess
    import time

    from ..conftest import ROOT
    from ..warm import kill, python

    base, www, _ = http_server
    write_mnist(www)
    sums = checksums(www, [p.name for p in www.iterdir()])
    cmd = [python(), "-m", "imgclf.stages.fetch", "--config-dir", str(ROOT / "conf"), "data=mnist"]
    cmd.append(f"data.checksums={sums}")
    proc = subprocess.Popen([*cmd, f"data.mirrors=[{base}/slow]"], cwd=tmp_path, env=project_env)
    downloads = tmp_path / "data/mnist/downloads"
    deadline = time.time() + 120
    while not list(downloads.glob(".*.tmp*")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    kill(proc)  # SIGKILL in the middle of the first file
    assert [p.name for p in downloads.iterdir() if not p.name.startswith(".")] == []  # nothing under a final name
    assert not (tmp_path / "data/mnist/images").exists()
    done = subprocess.run([*cmd, f"data.mirrors=[{base}]"], cwd=tmp_path, env=project_env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "data/mnist/images").rglob("*.png"))) == 120
    assert not list(downloads.glob(".*.tmp*"))  # the killed download's half is gone


@pytest.mark.parametrize(
    "name",
    ["../../../escaped", "..", ".", "b/c", "b\\c", ".hidden", "", "new\nline", "x\u2028y", "x\x85y", "nul\x00"],
)
def test_a_cifar_class_name_that_is_not_one_plain_folder_name_is_refused_before_anything_is_written(
    name, tmp_path, monkeypatch, compose_cfg
):
    """batches.meta's label names become folders: `..` or a `/` would write outside the images (or into another
    class), a hidden or a multi-line name would be left out of (or break) the split's lists."""
    from imgclf.errors import BadInput

    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar_tar(archive, classes=("plane", name, "bird"), str_keys=name == "")  # protocol 2 pickles b"" as a call
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=cifar10", f"data.archive={archive}", f"data.checksums={checksums(tmp_path, [archive.name])}"
    )
    with pytest.raises(BadInput, match=r"batches.meta: class name .* is not a plain folder name; each must be") as err:
        fetch(cfg)
    assert "\n" not in str(err.value)
    assert list(tmp_path.rglob("*.png")) == []  # nothing written, anywhere
    assert not (tmp_path / "data/cifar10/images").exists()


def test_a_cifar_class_named_twice_is_refused(tmp_path, monkeypatch, compose_cfg):
    from imgclf.errors import BadInput

    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar_tar(archive, classes=("plane", "car", "plane"))
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        "data=cifar10", f"data.archive={archive}", f"data.checksums={checksums(tmp_path, [archive.name])}"
    )
    with pytest.raises(BadInput, match="batches.meta: class name 'plane' is given twice"):
        fetch(cfg)
    assert not (tmp_path / "data/cifar10/images").exists()
