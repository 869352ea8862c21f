"""`imgclf STAGE [OVERRIDES]`: run a pipeline stage as a Hydra app without typing the module path."""
from __future__ import annotations

import importlib
import sys

STAGES = ("fetch", "split", "train", "evaluate", "export")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: imgclf {{{','.join(STAGES)}}} [HYDRA OVERRIDES...]", file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    command = sys.argv[1]
    if command not in STAGES:
        print(f"error: unknown command '{command}'; choose one of: {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"imgclf {command}", *sys.argv[2:]]
    importlib.import_module(f"imgclf.stages.{command}").main()
