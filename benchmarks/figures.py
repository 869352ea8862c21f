"""The confusion matrix figure of a data set of many classes, as evaluate draws it, against the same figure without
its caps (imgclf.plots.MAX_FIGURE_INCHES, MAX_CLASS_LABELS): each drawing in a fresh process, its wall time and
peak memory, and their ratios (targets < 1). The uncapped figure grew 0.45 inch and one name a class.

    python benchmarks/figures.py [--classes 100 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

DRAW = """
import json, math, resource, sys, time
import numpy as np
from imgclf import plots
n, capped, out = int(sys.argv[1]), sys.argv[2] == "capped", sys.argv[3]
if not capped:
    plots.MAX_FIGURE_INCHES, plots.MAX_CLASS_LABELS = math.inf, 1 << 30
rng = np.random.default_rng(0)
matrix = np.zeros((n, n), dtype=np.int64)
cells = rng.integers(0, n, (5 * n, 2))
np.add.at(matrix, (cells[:, 0], cells[:, 1]), 1)
start = time.perf_counter()
plots.plot_confusion(matrix, [f"class_{i}" for i in range(n)], out)
print(json.dumps({"s": time.perf_counter() - start, "mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def draw(classes: int, how: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", DRAW, str(classes), how, f"{tmp}/confusion.png"],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 300])
    args = parser.parse_args()
    print("| classes | uncapped | capped | time ratio | memory ratio |")
    print("|---|---|---|---|---|")
    for n in args.classes:
        before, after = draw(n, "uncapped"), draw(n, "capped")
        print(
            f"| {n} | {before['s']:.1f} s, {before['mb']:.0f} MB | {after['s']:.1f} s, {after['mb']:.0f} MB "
            f"| {after['s'] / before['s']:.3f} | {after['mb'] / before['mb']:.3f} |"
        )


if __name__ == "__main__":
    main()
