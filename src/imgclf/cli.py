"""`imgclf STAGE [OVERRIDES]` runs a pipeline stage; `imgclf predict PATH...` classifies images;
`imgclf runs` compares MLflow runs."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from imgclf.credentials import take_uri_credentials
from imgclf.errors import USER_ERRORS, BadInput, stoppable

STAGES = ("fetch", "split", "train", "evaluate", "export", "optimise")
COMMANDS = (*STAGES, "label-issues", "relabel", "predict", "runs", "reproduce", "lr-find", "sync", "serve", "check")


def predict_parser() -> argparse.ArgumentParser:
    from imgclf.paths import Paths

    parser = argparse.ArgumentParser(prog="imgclf predict", description=predict.__doc__)
    parser.add_argument("paths", nargs="+", help="images, folders of images, or .txt files listing paths")
    default = Paths()
    parser.add_argument(
        "--model",
        default=str(default.export_dir),
        help=f"export/optimised dir, model.onnx/.pt2/.xml/.plan (default: {default.export_dir}), "
        f"or a checkpoint {default.model_file}",
    )
    parser.add_argument("--top-k", type=_at_least_one, default=5, help="classes shown per image (default: 5)")
    parser.add_argument("--batch-size", type=_at_least_one, default=32)
    parser.add_argument(
        "--tta", action="store_true", help="average over the test-time views the model was trained for (evaluate.tta)"
    )
    parser.add_argument("--out", help="write predictions to a .csv or .json file instead of printing them")
    parser.add_argument(
        "--explain",
        metavar="DIR",
        help="also write a Grad-CAM overlay per image (DIR/<name>.cam.png: where the network looked for the class "
        "it gave); existing files are never replaced",
    )
    parser.add_argument(
        "--explain-model", default=str(default.model_file), help="the trained network Grad-CAM reads (gradients)"
    )
    parser.add_argument("--explain-layer", help="the layer to explain (a named_modules() name; default: the last "
                        "feature map: features for AlexNet/VGG, a timm CNN's last stage)")  # fmt: skip
    parser.add_argument("--submission", help="write a Kaggle submission CSV (id,label) for numbered images")
    parser.add_argument("--positive", default="dog", help="class whose probability is the submission's label")
    parser.add_argument(
        "--request",
        metavar="FILE",
        help="instead of classifying, write the images as the JSON body of a request to `mlflow models serve` "
        "(curl -d @FILE localhost:5001/invocations), preprocessed as the model's preprocessing.json says",
    )
    parser.add_argument(
        "--clip",
        type=_clip,
        default=0.05,
        help="clip submission probabilities to [clip, 1-clip], 0 <= clip < 0.5 (log loss punishes certainty)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an --out, --submission or --request file that is already there"
    )
    return parser


def _shown(path: str) -> str:
    """A path as one line of the table: quoted and escaped when it holds a newline or another control character."""
    return path if path.isprintable() else repr(path)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: an integer >= 1")
    return value


def _number_from_0(below: float, says: str) -> Callable[[str], float]:
    """An argparse type: a number from 0 up to (not including) `below`; anything else is `says` in one line."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < below:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {says}")
        return value

    return parse


_tolerance = _number_from_0(float("inf"), "a number >= 0")
_clip = _number_from_0(0.5, "a number >= 0 and < 0.5")


def predict(argv: list[str]) -> int:
    """Classify One / Classify Many: a top-k table per image, or a CSV/JSON file, or a Kaggle submission."""
    from imgclf.deploy.explain import Explanations
    from imgclf.deploy.inputs import collect_inputs
    from imgclf.deploy.predict import Classifier, check_outputs, write_submission, write_table
    from imgclf.targets import refuse_reading, refuse_to_replace

    args = predict_parser().parse_args(argv)
    outs = [(flag, path) for flag, path in (("--out", args.out), ("--submission", args.submission),
                                            ("--request", args.request)) if path]  # fmt: skip
    try:
        _check_outputs_asked(args, outs)
        for flag, out in outs:  # before any work: a file already there is replaced only with --force
            refuse_to_replace(out, flag, args.force)
        if not (inputs := collect_inputs(args.paths)):  # an empty folder or list: no success, and no empty file
            raise BadInput(f"no images in {', '.join(args.paths)}: give image files, a folder of them or a .txt list")
        model = Path(args.model)
        beside = [p for p in model.parent.iterdir() if p.is_file()] if model.is_file() else []  # its folder's files
        read = [*inputs, *args.paths, model, *beside, args.explain_model]
        for flag, out in outs:  # and never a file the command reads: an image, the model and what lies beside it
            refuse_reading(out, flag, read, [model] if model.is_dir() else [])
        check_outputs(outs)
        classifier = Classifier(args.model)
        if args.request:
            return _write_request(classifier, inputs, args.request)
        preds = classifier.classify(inputs, args.batch_size, tta=args.tta)
        names = classifier.class_names
        explanations = (  # checked before any file is written: a refused --explain leaves --out as it was
            Explanations(preds, classifier, Path(args.explain_model), Path(args.explain), args.explain_layer)
            if args.explain
            else None
        )
        check_outputs([*outs, *(("--explain", t) for t in (explanations.targets if explanations else []))])
        if args.submission:
            print(
                f"wrote {write_submission(preds, names, args.positive, args.clip, args.submission)} rows "
                f"to {args.submission}"
            )
        elif args.out and any(p.error is None for p in preds):  # not a file of error rows only
            write_table(preds, names, args.out)
            print(f"wrote {len(preds)} predictions to {args.out}")
        else:
            _print_top(preds, names, args.top_k)
        if explanations:
            print(f"wrote {len(explanations.write())} Grad-CAM overlays to {args.explain}")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [p for p in preds if p.error]
    for pred in failed:
        print(f"error: {_shown(pred.path)}: {pred.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(preds)} inputs could not be classified", file=sys.stderr)
    return 1 if failed and len(failed) == len(preds) else 0


def _check_outputs_asked(args, outs: list[tuple[str, str]]) -> None:
    """The output options, before any work: no empty name, one output file, no --explain with --request."""
    named = (("--out", args.out), ("--submission", args.submission), ("--request", args.request),
             ("--explain", args.explain), ("--explain-layer", args.explain_layer))  # fmt: skip
    if empty := [flag for flag, value in named if value is not None and not value.strip()]:
        raise BadInput(f"{empty[0]} was given an empty name: give a path (or leave {empty[0]} out)")
    if len(outs) > 1:  # each writes a file of its own kind, and only one is written
        raise BadInput(f"{' and '.join(flag for flag, _ in outs)} were given: give one of --out, --submission, "
                       "--request")  # fmt: skip
    if args.request and args.explain:
        raise BadInput("--request and --explain were given: --request classifies nothing, so there is nothing to "
                       "explain; give one of them")  # fmt: skip


def _print_top(preds, names: list[str], k: int) -> None:
    """Classify One's table: each classified image's top-k classes and their probabilities."""
    from imgclf.deploy.predict import top_k

    for pred in preds:
        if pred.probs is not None:
            print(_shown(pred.path))
            for rank, (name, prob) in enumerate(top_k(pred, names, k), start=1):
                print(f"  {rank}. {name:<20s} {prob:7.2%}")


def _write_request(classifier, images: list[Path], out: str) -> int:
    """`predict --request`: the images as the JSON body of a request to `mlflow models serve`."""
    from imgclf.deploy.predict import serving_request
    from imgclf.files import atomic_path

    with atomic_path(Path(out)) as tmp:
        tmp.write_text(json.dumps(serving_request(classifier.spec, images)))
    print(f"wrote a request of {len(images)} images to {out}")
    return 0


def runs_parser() -> argparse.ArgumentParser:
    from imgclf.tracking.compare import FORMATS

    parser = argparse.ArgumentParser(
        prog="imgclf runs",
        description=runs.__doc__,
        epilog="Metrics are each run's latest value: val/acc is the last epoch's, best/val/acc the best epoch's. "
        "Sweep parent runs (tag imgclf.role=sweep) are never listed.",
    )
    parser.add_argument(
        "--uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--experiment", default="imgclf")
    parser.add_argument(
        "--sweep",
        help="only the jobs of this sweep: its directory (tag imgclf.sweep) or an Optuna study's name (every "
        "worker's trials); the table ends with the jobs by state (finished, pruned, failed, running) and the best",
    )
    parser.add_argument("--parent", metavar="RUN_ID", help="only the child runs of this parent run")
    parser.add_argument("--metric", default="val/acc", help="sort by this metric (default: val/acc)")
    parser.add_argument("--order", choices=("desc", "asc"), default="desc", help="desc: highest first (default)")
    parser.add_argument("--limit", type=int, help="show only the first N runs")
    parser.add_argument("--all-params", action="store_true", help="show every param, not only those that differ")
    parser.add_argument("--format", choices=FORMATS, help="default: table, or from the --out suffix (.csv, .md)")
    parser.add_argument("--out", help="write the table to this file instead of printing it")
    parser.add_argument("--force", action="store_true", help="replace an --out file that is already there")
    parser.add_argument(
        "--best", action="store_true", help="print the best run's id, then name, metric, checkpoint and export lines"
    )
    parser.add_argument(
        "--as-overrides",
        action="store_true",
        help="with --best: print the `dvc exp run -S ...` that composes conf/ into the best sweep job's config "
        "(its group choices and every key that differs, the workspace's included): run it in the project",
    )
    return parser


def runs(argv: list[str]) -> int:
    """Compare MLflow runs: a table sorted by a metric showing the params that differ, or the best run's outputs."""
    from imgclf import tracking
    from imgclf.files import write_text
    from imgclf.targets import refuse_to_replace
    from imgclf.tracking import compare as compare

    parser = runs_parser()
    args = parser.parse_args(argv)
    if args.best and (args.out or args.format):
        parser.error("--best prints key: value lines; it takes no --format or --out")
    if args.as_overrides and not args.best:
        parser.error("--as-overrides goes with --best")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    given = {flag: getattr(args, flag) for flag in ("sweep", "parent", "out")}
    if empty := [flag for flag, value in given.items() if value is not None and not value.strip()]:
        parser.error(f"--{empty[0]} was given an empty value (it would mean none given)")
    if args.out and (args.out.endswith(("/", os.sep)) or not (args.format or compare.known_suffix(args.out))):
        parser.error(f"--out {args.out}: give a file name ending .csv, .md or .txt (or none), or a --format")
    args.uri = take_uri_credentials(args.uri)  # user:password into MLflow's variables: in no message or command
    try:
        tracking.require_server(args.uri)
        if args.out:
            refuse_to_replace(args.out, "--out", args.force)
        rows = compare.list_runs(args.uri, args.experiment, args.sweep, args.parent)
        if not rows:
            raise BadInput(compare.no_match_message(args.uri, args.experiment, args.sweep, args.parent))
        if args.best:
            best = compare.best_run(rows, args.metric, args.order)
            if args.as_overrides:
                print(compare.best_command(args.uri, best))
                return 0
            print("\n".join(compare.best_report(args.uri, best, args.metric)))
            return 0
        compare.check_metric(rows, args.metric)
        every, rows = rows, compare.sort_rows(rows, args.metric, args.order)[: args.limit]
        fmt = compare.format_for(args.out or "", args.format)
        text = compare.format_table(rows, compare.table_columns(rows, args.metric, args.all_params), fmt)
        if args.out:
            write_text(args.out, text)
            print(f"wrote {len(rows)} runs to {args.out}")
        else:
            print(text, end="")
            if (args.sweep or args.parent) and fmt == "table":
                print(compare.sweep_summary(every, args.metric, args.order))  # all, --limit or not
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def reproduce_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf reproduce", description=reproduce.__doc__)
    parser.add_argument("run_id", help="the MLflow run to reproduce (a train run; evaluate's metrics are compared)")
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--out-dir", help="a new or empty folder the new run writes into (default: reproduce/<run id>)")
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        help="max |difference| per metric (default: 0 on the same machine and libraries, 0.02 elsewhere)",
    )
    return parser


def reproduce(argv: list[str]) -> int:
    """Re-create a run from its MLflow record (config, code version, data version) into a new run, and compare."""
    from omegaconf import OmegaConf

    from imgclf import tracking
    from imgclf.paths import Paths
    from imgclf.reproduce import Record, compare, differences, format_rows, reproduction_config, tolerance_for
    from imgclf.stages.evaluate import evaluate
    from imgclf.stages.train import train

    args = reproduce_parser().parse_args(argv)
    args.uri = take_uri_credentials(args.uri)
    try:
        out_dir = Path(args.out_dir or Path("reproduce") / args.run_id)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise BadInput(
                f"--out-dir {out_dir} is already there{'' if out_dir.is_dir() else ' (a file)'}: give a new or empty "
                "folder (the reproduction writes its models/, reports/ and checkpoints/ in it); nothing was written"
            )
        tracking.require_server(args.uri)
        record = Record.load(args.uri, args.run_id)
        found = differences(record, Paths.from_config(record.config["paths"]))
        if found:
            raise BadInput(f"cannot reproduce run {args.run_id}: {'; '.join(found)}")
        tolerance, why = tolerance_for(record, args.tolerance)
        cfg = OmegaConf.create(reproduction_config(record, args.uri, out_dir))
        train(cfg)
        evaluate(cfg)
        new_id = tracking.read_run_file(out_dir / "models" / "run.json")["run_id"]
        tracking.set_run_tags(args.uri, new_id, {"imgclf.reproduces": args.run_id})
        rows, ok = compare(record.metrics, tracking.run_record(args.uri, new_id)["metrics"], tolerance)
        print(format_rows(rows, args.run_id, new_id))
        print(f"tolerance {tolerance:g} ({why}): {'reproduced' if ok else 'NOT reproduced'}")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def sync_parser() -> argparse.ArgumentParser:
    from imgclf.tracking.outbox import default_root

    parser = argparse.ArgumentParser(prog="imgclf sync", description=sync.__doc__)
    parser.add_argument("--outbox", type=Path, default=default_root(), help="default: %(default)s")
    parser.add_argument(
        "--uri", help="tracking URI (default: the run's own, or MLFLOW_TRACKING_URI when its credentials were hidden)"
    )
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server per run")
    return parser


def sync(argv: list[str]) -> int:
    """Send the records that runs left in the outbox when the tracking server stayed away (tracking.outage_wait_s)."""
    from imgclf import tracking
    from imgclf.credentials import unknown_store

    parser = sync_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.wait < float("inf"):
        parser.error(f"--wait {args.wait} is not valid: seconds, a number from 0")
    store = args.uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    why = unknown_store(store)
    if why is None and args.outbox.exists() and not args.outbox.is_dir():
        why = f"--outbox {args.outbox} is a file; give the folder runs keep their outboxes in"
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 1
    try:  # a database that does not answer: one line now, not MLflow's minutes of retries (a server is waited for)
        tracking.require_database(tracking.resolve_uri(store), "give another --uri")
        results = tracking.sync_outboxes(args.outbox, args.uri, args.wait)
        for run_id, left in results:
            print(f"{run_id}: {'sent' if left == 0 else f'{left} records still waiting'}")
        if not results:
            print(f"nothing to send in {args.outbox}")
        for run_id in tracking.end_killed_runs_in_store(store):
            print(f"{run_id}: its process was killed; marked KILLED")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(left for _, left in results) else 0


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf check", description=check.__doc__)
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="OVERRIDE", help="an override, as dvc exp run -S takes it"
    )
    parser.add_argument("overrides", nargs="*", help="more overrides, without -S")
    return parser


def check(argv: list[str]) -> int:
    """`imgclf check -S a -S b`: the overrides of a `dvc exp run` checked as DVC will compose them (from conf/), in
    one line and before DVC prints its own dozen: unknown keys and choices, bad values, missing folders."""
    from imgclf.config import check_overrides, compose, missing_for_dvc
    from imgclf.data.transforms import check_augment
    from imgclf.options import Options

    args = check_parser().parse_intermixed_args(argv)
    overrides = [*args.set, *args.overrides]
    error = check_overrides(overrides)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        runs = _experiments(overrides)  # `-S a=1,2 -S b=x,y`: DVC queues the grid; each one is checked
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in runs:
        try:
            cfg = compose(run)
            opts = Options.from_config(cfg).check_targets()
            check_augment(opts.augment.op_sets(), opts.model.image_size)
            error = missing_for_dvc(cfg)
            if error:
                raise BadInput(error)
        except USER_ERRORS as exc:
            print(f"error: {' '.join(run) + ': ' if len(runs) > 1 else ''}{exc}", file=sys.stderr)
            return 1
    print(f"ok: {' '.join(overrides) or 'conf/ as it is'}" + (f" ({len(runs)} experiments)" if len(runs) > 1 else ""))
    return 0


def _experiments(overrides: list[str]) -> list[list[str]]:
    """The experiments `dvc exp run -S` makes of these overrides: one per combination of swept values."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override() and type(o.value()).__name__ not in ("ChoiceSweep", "RangeSweep"):
            raise BadInput(
                f"{text}: dvc exp run -S (and its queue's grid) takes a list (a,b) or range(start,stop,step) only; "
                "interval() and tag() are for an Optuna sweep (imgclf train -m +sweep=...), glob() for Hydra's -m"
            )
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [text]
        for text, o in zip(overrides, parsed)
    ]
    return [list(run) for run in itertools.product(*values)]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every console command with options of its own, by name: the CLI reference is generated from these."""
    from imgclf.data.relabel import relabel_parser
    from imgclf.deploy.webapp import serve_parser

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
    if command == "predict":
        sys.exit(predict(sys.argv[2:]))
    if command == "relabel":
        from imgclf.data.relabel import command as relabel

        sys.exit(relabel(sys.argv[2:]))
    if command == "serve":
        from imgclf.deploy.webapp import main as serve

        sys.exit(serve(sys.argv[2:]))
    if command == "reproduce":  # trains in this process: SIGTERM ends its runs as KILLED, as a stage's do
        with stoppable():
            sys.exit(reproduce(sys.argv[2:]))
    if command in ("runs", "sync", "check"):
        sys.exit({"runs": runs, "sync": sync, "check": check}[command](sys.argv[2:]))
    sys.argv = [f"imgclf {command}", *sys.argv[2:]]
    gc.disable()  # as for `python -m imgclf.stages.<stage>`: off through the imports, back on in the stage's main
    importlib.import_module(f"imgclf.stages.{command.replace('-', '_')}").main()
