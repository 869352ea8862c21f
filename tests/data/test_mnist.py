"""MNIST's IDX files that lie about their size, served over loopback to the fetch stage's real main: the header is
checked before the data is decompressed, so a bomb costs what MNIST's largest file does, not what it unpacks to."""

import gzip
import re
import struct
import tracemalloc

import numpy as np
import pytest

from ..conftest import ROOT, stage_main
from .test_mnist_cifar import checksums, idx_gz, write_mnist

ZEROS_MB = gzip.compress(bytes(1 << 20))  # one gzip member of 1 MB of zeros (1 KB); gzip readers read on past it
BOMB_MB = 64


def header(magic: int, *dims: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


CASES = {  # train-images-idx3-ubyte.gz as served -> what the error says of it
    "longer than declared": (
        gzip.compress(header(2051, 5, 28, 28) + bytes(3920)) + ZEROS_MB * BOMB_MB,
        "header says 5x28x28 = 3920 bytes of data, file has more; an IDX file holds exactly what its header declares",
    ),
    "declares 2**31 images": (
        gzip.compress(header(2051, 2**31, 28, 28)) + ZEROS_MB * BOMB_MB,
        "header declares 2147483648 images of 28x28; MNIST holds at most 60,000 images of 28x28",
    ),
    "not 28 x 28": (
        gzip.compress(header(2051, 5, 32, 32) + bytes(5 * 32 * 32)),
        "header declares 5 images of 32x32; MNIST holds at most 60,000 images of 28x28",
    ),
    "float pixels": (
        gzip.compress(header(0x0D03, 5, 28, 28) + bytes(5 * 28 * 28 * 4)),
        r"bad IDX magic 00000d03, expected 00000803 \(unsigned bytes, 3 dimensions\)",
    ),
    "short": (
        gzip.compress(header(2051, 100, 28, 28) + bytes(100 * 28 * 28 - 1)),
        "header says 100x28x28 = 78400 bytes of data, file has 78399; the file is truncated or corrupt",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_idx_file_that_lies_about_its_size_is_one_line_before_it_is_decompressed(case, http_server, tmp_path):
    base, www, _ = http_server
    write_mnist(www)
    served, says = CASES[case]
    (www / "train-images-idx3-ubyte.gz").write_bytes(served)
    sums = checksums(www, [p.name for p in www.iterdir()])
    args = ["--config-dir", str(ROOT / "conf"), "data=mnist", f"data.mirrors=[{base}]", f"data.checksums={sums}"]
    args += ["hydra.run.dir=.", "hydra.output_subdir=null"]
    tracemalloc.start()
    try:
        done = stage_main("fetch", args, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: train-images-idx3-ubyte.gz: "), done.stderr
    assert re.search(says, done.stderr), done.stderr
    assert peak < BOMB_MB / 4 * 2**20, f"{peak / 2**20:.0f} MB: the file was decompressed whole"
    assert not (tmp_path / "data/mnist/images").exists() and list(tmp_path.rglob("*.png")) == []


def test_a_labels_file_declaring_more_than_mnist_holds_is_refused(tmp_path):
    from imgclf.data.mnist import LABELS_MAGIC, read_idx
    from imgclf.errors import BadInput

    (tmp_path / "labels.gz").write_bytes(idx_gz(np.zeros(60_001), LABELS_MAGIC))
    with pytest.raises(BadInput, match="labels.gz: header declares 60001 labels; MNIST holds at most 60,000 labels"):
        read_idx(tmp_path / "labels.gz", LABELS_MAGIC)
    (tmp_path / "labels.gz").write_bytes(idx_gz(np.arange(60_000) % 10, LABELS_MAGIC))  # MNIST's own size is read
    assert len(read_idx(tmp_path / "labels.gz", LABELS_MAGIC)) == 60_000


def test_idx_files_declaring_no_items_are_refused_in_one_line(http_server, tmp_path):
    """Four IDX files of 0 images and 0 labels agree with each other: they fetched nothing, with exit 0."""
    base, www, _ = http_server
    for prefix in ("train", "t10k"):
        (www / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header(2051, 0, 28, 28)))
        (www / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header(2049, 0)))
    sums = checksums(www, [p.name for p in www.iterdir()])
    args = ["--config-dir", str(ROOT / "conf"), "data=mnist", f"data.mirrors=[{base}]", f"data.checksums={sums}"]
    done = stage_main("fetch", [*args, "hydra.run.dir=.", "hydra.output_subdir=null"], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    said = "error: train-images-idx3-ubyte.gz: header declares 0 items; an MNIST file holds 1 to 60,000"
    assert done.stderr.startswith(said), done.stderr
    assert not (tmp_path / "data/mnist/images").exists()


def test_checksums_null_fetches_unverified_and_downloads_again_at_every_fetch(http_server, tmp_path):
    """data.checksums=null is no checksums, as a file's own null is: it was an AttributeError traceback."""
    from imgclf import cli

    from ..conftest import console

    base, www, requests = http_server
    write_mnist(www, n_train=20, n_test=10)
    args = ["--config-dir", str(ROOT / "conf"), "data=mnist", f"data.mirrors=[{base}]", "data.checksums=null"]
    for _ in range(2):
        done = stage_main("fetch", [*args, "hydra.run.dir=.", "hydra.output_subdir=null"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "data/mnist/images").rglob("*.png"))) == 30
    assert sum("idx" in line for line in requests) == 8  # nothing verifies a kept copy: each fetch downloads again
    assert console(cli.check, ["-S", "data=mnist", "-S", "data.checksums=null"], ROOT).returncode == 0


@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_checksums_that_are_no_mapping_are_one_line_in_check_and_fetch(data, tmp_path):
    from imgclf import cli

    from ..conftest import console

    said = "error: data.checksums='abc' is not valid: a mapping of file name to md5 or sha256 digest"
    done = console(cli.check, ["-S", f"data={data}", "-S", "data.checksums=abc"], ROOT)
    assert done.returncode == 1 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done.stderr
    args = ["--config-dir", str(ROOT / "conf"), f"data={data}", "data.checksums=abc", "hydra.run.dir=."]
    done = stage_main("fetch", [*args, "hydra.output_subdir=null"], tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "data").exists()
