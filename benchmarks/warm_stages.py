"""What the test suite's warm interpreter (tests/warm.py) saves a stage process: the train and evaluate stages of a
tiny project (3 classes of 20 images, timm's test_resnet at 32 px, 2 epochs) run as `python -m imgclf.stages.<stage>`
through the real interpreter and through the warm one's `python` program, alternated; wall-clock and CPU medians
(the warm child's CPU read from the warm process's reaped children, plus the program's own) and their ratio
(warm / real).

    python benchmarks/warm_stages.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the test session runs torch

from tests import warm  # noqa: E402
from tests.conftest import TINY_OVERRIDES, make_tiny_project  # noqa: E402


def children_of(pid: int) -> float:
    """CPU seconds of `pid`'s reaped children (/proc/PID/stat: cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run(python: str, stage: str, project: Path, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one stage process."""
    warm_before = children_of(warm.PROCESS[0].pid)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    cmd = [python, "-m", f"imgclf.stages.{stage}", "--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES]
    subprocess.run([*cmd, f"tracking.uri=sqlite:///{project}/mlflow.db"], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, own + children_of(warm.PROCESS[0].pid) - warm_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgclf-warm-bench-"))
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    project = make_tiny_project(home / "project")
    warm.remember(os.environ)
    folder = warm.shim()
    env = dict(os.environ, PATH=os.pathsep.join([str(folder), os.environ["PATH"]]))
    run(warm.python(), "train", project, env)  # the warm process's imports, once, and the pixel baseline kept
    print(f"machine: {os.cpu_count()} cores; {args.repeats} runs each, alternated; medians")
    for stage in ("train", "evaluate"):
        times: dict[str, list[tuple[float, float]]] = {"real": [], "warm": []}
        for _ in range(args.repeats):
            times["real"].append(run(sys.executable, stage, project, env))
            times["warm"].append(run(warm.python(), stage, project, env))
        (rw, rc), (ww, wc) = ([statistics.median(x) for x in zip(*times[k])] for k in ("real", "warm"))
        print(f"{stage:9s} real {rw:5.2f} s wall {rc:5.2f} s CPU | warm {ww:5.2f} s wall {wc:5.2f} s CPU | "
              f"warm/real: wall {ww / rw:.2f}, CPU {wc / rc:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
