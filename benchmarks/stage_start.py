"""What a stage process costs before and after its work: `python -m imgclf.stages.<stage> --help` (the imports,
Hydra's help, the exit) as DVC starts it, with the garbage collector off through the imports and the heap frozen
(imgclf.stages.settle_imports), beside the same module run through runpy, where the package is imported as a library
and the collector runs as usual. Alternated, wall-clock medians and their ratio (target < 1).

    python benchmarks/stage_start.py [--stages evaluate train] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

AS_DVC = "{python} -m imgclf.stages.{stage} --help"
AS_LIBRARY = (
    "import runpy, sys; sys.argv = ['{stage}', '--help']; "
    "runpy.run_module('imgclf.stages.{stage}', run_name='__main__')"
)


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["evaluate", "train"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'stage':10} {'as a library':>13} {'as DVC starts it':>17} {'ratio':>6}")
    for stage in args.stages:
        library, own = [], []
        for _ in range(args.repeats):
            library.append(wall([sys.executable, "-c", AS_LIBRARY.format(stage=stage)]))
            own.append(wall(AS_DVC.format(python=sys.executable, stage=stage).split()))
        a, b = statistics.median(library), statistics.median(own)
        print(f"{stage:10} {a:12.2f}s {b:16.2f}s {b / a:6.3f}")


if __name__ == "__main__":
    main()
