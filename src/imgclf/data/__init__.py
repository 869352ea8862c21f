"""Data: sources (one module per upstream format), the image-folder layout, split and in-memory datasets.

Where data sets live is imgclf.paths (conf/config.yaml's `paths.data`, which dvc.yaml interpolates too).
"""

SPLITS = ("train", "val", "test")
VAL_LIST = "val.txt"  # images/val.txt: a fixed validation set (a folder source's separate val folder)
TEST_LIST = "test.txt"  # images/test.txt: a source's official test set (paths), kept as the test split
