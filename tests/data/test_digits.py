import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from imgclf.data.digits import fetch_digits
from imgclf.data.folder import scan_image_folder


def test_fetch_writes_every_scan_as_png_in_class_folders(tmp_path):
    n = fetch_digits(tmp_path)
    bunch = load_digits()
    assert n == len(bunch.images) == 1797
    scan = scan_image_folder(tmp_path)
    assert scan.class_names == [str(d) for d in range(10)]
    assert len(scan.items) == 1797 and not scan.skipped
    # pixels round-trip: 0..16 counts scaled to 0..255
    img = np.asarray(Image.open(tmp_path / str(bunch.target[5]) / "0005.png"))
    assert img.shape == (8, 8) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.round(bunch.images[5] * 255 / 16).astype(np.uint8))
