"""CIFAR-10 batches that lie about their contents, fetched through the stage's real main: one line, nothing left."""

import re

import numpy as np
import pytest

from ..conftest import ROOT, stage_main
from .test_mnist_cifar import checksums, cifar_tar

ROWS = np.zeros((12, 3072), np.uint8)


def fetch_args(archive):
    sums = checksums(archive.parent, [archive.name])
    return [
        "--config-dir",
        str(ROOT / "conf"),
        "data=cifar10",
        f"data.archive={archive}",
        f"data.checksums={sums}",
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",  # as dvc.yaml runs it: no fetch.log in the project
    ]


@pytest.mark.parametrize(
    "entries,says",
    [
        ({b"labels": [300] + [0] * 11}, "label 300 is outside 0..9"),
        ({b"labels": [0] * 11 + [-1]}, "label -1 is outside 0..9"),
        ({b"labels": [0.5] * 12}, "labels hold float64 values"),  # int() would make every one class 0
        ({b"labels": [True] * 12}, "labels hold bool values"),
        ({b"labels": [[0, 1]] * 12}, r"labels have shape \(12, 2\)"),
        ({b"labels": {0: 1}}, "labels is a dict"),
        ({b"labels": [0] * 11}, "12 rows of data but 11 labels"),
        ({b"data": ROWS.astype(np.float64)}, r"data is an array of float64 with shape \(12, 3072\)"),
        ({b"data": ROWS.astype(np.int64) + 300}, r"data is an array of int64 with shape \(12, 3072\)"),  # wraps to 44
        ({b"data": ROWS[:, :1024]}, r"data is an array of uint8 with shape \(12, 1024\)"),
        ({b"data": ROWS.reshape(12, 3, 32, 32)}, r"data is an array of uint8 with shape \(12, 3, 32, 32\)"),
        ({b"data": [[300] * 3072] * 12}, "data is a list; expected a uint8 array of N x 3072"),
    ],
    ids=[
        "label 300",
        "label -1",
        "float labels",
        "bool labels",
        "2-d labels",
        "dict labels",
        "labels short",
        "float data",
        "int64 data",
        "short rows",
        "4-d data",
        "list data",
    ],
)
def test_a_batch_with_bad_data_or_labels_is_one_line_naming_it_and_nothing_is_written(entries, says, tmp_path):
    archive = tmp_path / "in" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    classes = [f"c{i}" for i in range(10)]
    cifar_tar(archive, classes=classes, poison={"data_batch_3": entries})
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: data_batch_3: "), done.stderr[-2000:]
    assert re.search(says, done.stderr), done.stderr
    assert not (tmp_path / "data/cifar10/images").exists() and list(tmp_path.rglob("*.png")) == []


def test_a_good_batch_given_as_an_integer_array_of_labels_is_read(tmp_path):
    """numpy integer labels (a re-pickled mirror) are labels as much as a list of ints."""
    archive = tmp_path / "in" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    cifar_tar(archive, poison={"test_batch": {b"labels": np.arange(12, dtype=np.uint8) % 3}})
    done = stage_main("fetch", fetch_args(archive), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "data/cifar10/images").rglob("*.png"))) == 72


@pytest.mark.parametrize("how", ["mirror down", "bad batch downloaded", "bad batch as data.archive"])
def test_a_failed_first_fetch_leaves_no_folder_behind(how, http_server, tmp_path):
    """Only a verified download stays (the next fetch reuses it); no empty data/cifar10/ or downloads/ is left."""
    base, www, _ = http_server
    archive = www / "cifar-10-python.tar.gz"
    cifar_tar(archive, poison={"test_batch": {b"labels": [10] * 12}})
    project = tmp_path / "project"
    project.mkdir()
    args = fetch_args(archive)
    if how != "bad batch as data.archive":
        args[args.index(f"data.archive={archive}")] = (
            f"data.mirrors=[{base}/down]" if how == "mirror down" else (f"data.mirrors=[{base}]")
        )
    done = stage_main("fetch", args, project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    kept = ["data/cifar10/downloads/cifar-10-python.tar.gz"] if how == "bad batch downloaded" else []
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == kept
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_dir()) == (
        ["data", "data/cifar10", "data/cifar10/downloads"] if kept else []
    )


def test_a_failed_fetch_leaves_the_folders_that_were_there_before(http_server, tmp_path):
    base, www, _ = http_server
    archive = www / "cifar-10-python.tar.gz"
    cifar_tar(archive)
    project = tmp_path / "project"
    (project / "data/cifar10/downloads").mkdir(parents=True)  # empty, and not the fetch's to remove
    args = fetch_args(archive)
    args[args.index(f"data.archive={archive}")] = f"data.mirrors=[{base}/down]"
    assert stage_main("fetch", args, project).returncode == 1
    assert [p.relative_to(project).as_posix() for p in sorted(project.rglob("*"))] == [
        "data",
        "data/cifar10",
        "data/cifar10/downloads",
    ]
