"""`imgclf STAGE [OVERRIDES]` runs a pipeline stage; `imgclf predict PATH...` classifies images;
`imgclf runs` compares MLflow runs.

This module dispatches; each family of commands has a module of its own: _predict, _runs (runs, reproduce, sync),
_check, and _serve (imported only when serve runs or its parser is asked for: it loads the web app). They import
their heavy libraries inside the command, so `imgclf --help`, fetch and split load neither torch nor MLflow.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import sys

from imgclf.cli._check import check, check_parser
from imgclf.cli._predict import predict, predict_parser
from imgclf.cli._runs import reproduce, reproduce_parser, runs, runs_parser, sync, sync_parser
from imgclf.errors import stoppable

STAGES = ("fetch", "split", "train", "evaluate", "export", "optimise")
COMMANDS = (*STAGES, "label-issues", "relabel", "predict", "runs", "reproduce", "lr-find", "sync", "serve", "check")


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every console command with options of its own, by name: the CLI reference is generated from these."""
    from imgclf.cli._serve import serve_parser
    from imgclf.data.relabel import relabel_parser

    return {
        "relabel": relabel_parser(),
        "predict": predict_parser(),
        "runs": runs_parser(),
        "reproduce": reproduce_parser(),
        "sync": sync_parser(),
        "serve": serve_parser(),
        "check": check_parser(),
    }


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(
            f"usage: imgclf {{{','.join(COMMANDS)}}} ...\n"
            "  imgclf STAGE [HYDRA OVERRIDES...]   run a pipeline stage from conf/\n"
            "  imgclf label-issues [OVERRIDES...]   the images whose label looks wrong (cleanlab), ranked\n"
            "  imgclf relabel PATH=LABEL | --accept 1-10   fix labels in relabel/<data>.csv; dvc repro applies them\n"
            "  imgclf predict PATH... [--out FILE]  classify images with the exported model\n"
            "  imgclf runs [--sweep ID] [--best]     compare MLflow runs, or show the best one\n"
            "  imgclf reproduce RUN_ID               re-create a run from its record and compare\n"
            "  imgclf lr-find [HYDRA OVERRIDES...]   fast.ai's learning-rate finder: plot and suggested rate\n"
            "  imgclf sync                           send what runs logged while the tracking server was away\n"
            "  imgclf serve [--model M] [--port P]   Classify One / Many and the model card in a browser\n"
            "  imgclf check [-S OVERRIDE...]         a dvc exp run's overrides checked in one line",
            file=sys.stderr,
        )
        sys.exit(0 if len(sys.argv) > 1 else 2)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command != "serve":  # a command that ends: no walk of the whole heap at its exit (stages._app.settle_imports)
        atexit.register(gc.freeze)
    if command == "predict":  # Ctrl-C and SIGTERM: one line, and what it wrote taken back
        with stoppable():
            sys.exit(predict(sys.argv[2:]))
    if command == "relabel":
        from imgclf.data.relabel import command as relabel

        sys.exit(relabel(sys.argv[2:]))
    if command == "serve":
        from imgclf.cli._serve import main as serve

        sys.exit(serve(sys.argv[2:]))
    if command == "reproduce":  # trains in this process: SIGTERM ends its runs as KILLED, as a stage's do
        with stoppable():
            sys.exit(reproduce(sys.argv[2:]))
    if command in ("runs", "sync", "check"):
        sys.exit({"runs": runs, "sync": sync, "check": check}[command](sys.argv[2:]))
    sys.argv = [f"imgclf {command}", *sys.argv[2:]]
    gc.disable()  # as for `python -m imgclf.stages.<stage>`: off through the imports, back on in the stage's main
    importlib.import_module(f"imgclf.stages.{command.replace('-', '_')}").main()
