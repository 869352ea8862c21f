"""Data: sources (one module per upstream format), the image-folder layout, split and in-memory datasets."""
from pathlib import Path

IMAGE_DIR = "images"   # data/<dataset>/images/<class>/<file>: the layout every source ends in
SPLIT_DIR = "split"    # data/<dataset>/split/{train,val,test}.csv, labels.txt, sample/
SPLITS = ("train", "val", "test")
VAL_LIST = "val.txt"    # images/val.txt: a fixed validation set (a folder source's separate val folder)
TEST_LIST = "test.txt"  # images/test.txt: a source's official test set (paths), kept as the test split


def dataset_dir(data_root: str | Path, name: str) -> Path:
    """Directory of one data set; data sets live side by side so sweeps across them work."""
    return Path(data_root) / name

DATA_ROOT = Path("data")  # relative to the project root, as dvc.yaml declares
