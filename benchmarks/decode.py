"""What reading a folder and decoding odd images cost: `scan_image_folder` over a class of empty files beside a few
images (a copy gone wrong, a sync that left placeholders), and the peak memory of `decode_image` on 16-bit and
32-bit grayscale (microscopes, depth maps), each in its own process. With `--src`, the same from another checkout's
src/ folder, alternated with this one's: the ratios are this checkout's over the other's (target < 1 for both).

    python benchmarks/decode.py [--empty 100000] [--megapixels 20] [--repeats 2]
    python benchmarks/decode.py --src /tmp/old/src     # side by side with an older checkout
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCAN = """
import sys, time
sys.path.insert(0, {src!r})
from imgclf.data.folder import scan_image_folder
start = time.perf_counter()
scan = scan_image_folder({root!r})
print(time.perf_counter() - start, sum(scan.skipped_counts().values()))
"""
# the peak of this process's own memory (VmHWM: ru_maxrss would keep the parent's peak from before the exec)
DECODE = """
import re, sys
sys.path.insert(0, {src!r})
from imgclf.data.images import decode_image
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
before = peak()
decode_image({path!r}, 224, "bilinear", resize="crop")
print((peak() - before) / {pixels})
"""


def make_data(root: Path, empty: int, megapixels: float) -> tuple[Path, dict[str, Path], int]:
    import numpy as np
    from PIL import Image

    folder = root / "folder"
    for name in ("cats", "dogs", "junk"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (80 * i, 40, 200)).save(folder / name / f"{i}.png")
    for i in range(empty):
        (folder / "junk" / f"{i:07d}.jpg").touch()
    width = int((megapixels * 1e6) ** 0.5)
    pixels = width * width
    gray = (np.arange(pixels, dtype=np.uint32) % 65536).astype(np.uint16).reshape(width, width)
    images = {"16-bit grayscale PNG": root / "gray16.png", "32-bit grayscale TIFF": root / "gray32.tif"}
    Image.fromarray(gray).save(images["16-bit grayscale PNG"])
    Image.fromarray(gray.astype(np.int32), "I").save(images["32-bit grayscale TIFF"])
    return folder, images, pixels


def measure(script: str) -> float:
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--empty", type=int, default=100_000, help="empty files in the junk class")
    parser.add_argument("--megapixels", type=float, default=20.0, help="size of the grayscale images")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--src", type=Path, help="another checkout's src/ folder, measured alternately")
    args = parser.parse_args()
    sources = {"this": str(Path(__file__).resolve().parents[1] / "src")}
    if args.src:
        sources["other"] = str(args.src.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        folder, images, pixels = make_data(Path(tmp), args.empty, args.megapixels)
        rows = {"scan, seconds": {s: [] for s in sources}}
        rows.update({f"{kind}, bytes a pixel": {s: [] for s in sources} for kind in images})
        for _ in range(args.repeats):
            for name, src in sources.items():
                rows["scan, seconds"][name].append(measure(SCAN.format(src=src, root=str(folder))))
                for kind, path in images.items():
                    script = DECODE.format(src=src, path=str(path), pixels=pixels)
                    rows[f"{kind}, bytes a pixel"][name].append(measure(script))
    print(f"{args.empty:,} empty files beside 9 images; {pixels / 1e6:.1f} MP grayscale; medians of {args.repeats}")
    for what, by_source in rows.items():
        line = "  ".join(f"{name}: {statistics.median(values):.2f}" for name, values in by_source.items())
        if args.src:
            ratio = statistics.median(by_source["this"]) / statistics.median(by_source["other"])
            line += f"  ratio this/other: {ratio:.2f}"
        print(f"{what:<40s} {line}")


if __name__ == "__main__":
    main()
