"""`imgclf predict PATH...`: Classify One / Classify Many with the exported model, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgclf.cli._arguments import at_least_one, number_from_0, seconds
from imgclf.errors import USER_ERRORS, BadInput

_clip = number_from_0(0.5, "a number >= 0 and < 0.5")


def predict_parser() -> argparse.ArgumentParser:
    from imgclf.deploy.runtimes import RUN_SECONDS
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
    parser.add_argument("--top-k", type=at_least_one, default=5, help="classes shown per image (default: 5)")
    parser.add_argument("--batch-size", type=at_least_one, default=32)
    parser.add_argument(
        "--inference-timeout",
        type=seconds,
        default=RUN_SECONDS,
        help="seconds one run of the model (a batch, or the load's check on two blank images) may take; past them it "
        "is stopped and predict ends in one line (onnxruntime and OpenVINO models) (default: %(default)s)",
    )
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


def predict(argv: list[str]) -> int:
    """Classify One / Classify Many: a top-k table per image, or a CSV/JSON file, or a Kaggle submission."""
    from imgclf.deploy.explain import Explanations
    from imgclf.deploy.inputs import collect_inputs
    from imgclf.deploy.model_card import older_than_training
    from imgclf.deploy.predict import Classifier, check_outputs
    from imgclf.targets import refuse_to_replace

    args = predict_parser().parse_args(argv)
    outs = [(flag, path) for flag, path in (("--out", args.out), ("--submission", args.submission),
                                            ("--request", args.request)) if path]  # fmt: skip
    try:
        _check_outputs_asked(args, outs)
        for flag, out in outs:  # before any work: a file already there is replaced only with --force
            refuse_to_replace(out, flag, args.force)
        if blank := [p for p in args.paths if not p.strip()]:  # "" was the working folder, walked whole
            raise BadInput(f"an input was given as {blank[0]!r}: give image files, a folder of them or a .txt list")
        if not (inputs := collect_inputs(args.paths)):  # an empty folder or list: no success, and no empty file
            raise BadInput(f"no images in {', '.join(args.paths)}: give image files, a folder of them or a .txt list")
        _refuse_reading(args, outs, inputs)
        check_outputs(outs)
        classifier = Classifier(args.model, timeout=args.inference_timeout)
        if note := older_than_training(Path(args.model).expanduser()):
            print(f"warning: {note}", file=sys.stderr)
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
        if args.out and Path(args.out).suffix.lower() not in (".csv", ".json"):  # a .txt is a list predict reads
            raise BadInput(f"--out {args.out!r}: give a .csv or a .json file (its suffix picks the format)")
        _write(args, preds, names, explanations)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [p for p in preds if p.error]
    for pred in failed:
        print(f"error: {_shown(pred.path)}: {pred.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(preds)} inputs could not be classified", file=sys.stderr)
    return 1 if failed and len(failed) == len(preds) else 0


def _write(args, preds, names: list[str], explanations) -> None:
    """The overlays first (the slow part: stopped there, no table is written), then the table, the submission or
    the printout; a failure or a stop in the table takes the overlays back: nothing partial is left."""
    from imgclf.deploy.predict import write_submission, write_table

    overlays = explanations.write() if explanations else []
    try:
        if args.submission:
            rows = write_submission(preds, names, args.positive, args.clip, args.submission)
            print(f"wrote {rows} rows to {args.submission}")
        elif args.out and any(p.error is None for p in preds):  # not a file of error rows only
            write_table(preds, names, args.out)
            print(f"wrote {len(preds)} predictions to {args.out}")
        else:
            _print_top(preds, names, args.top_k)
    except BaseException:
        if explanations:
            explanations.remove()
        raise
    if explanations:
        print(f"wrote {len(overlays)} Grad-CAM overlays to {args.explain}")


def _refuse_reading(args, outs: list[tuple[str, str]], inputs: list[Path]) -> None:
    """No output is a file the command reads (an image, the model and what lies beside it), and the overlays of
    --explain go in none of the folders it reads: the model's, an image's own, a folder given to classify."""
    from imgclf.targets import refuse_reading

    model = Path(args.model)
    beside = [p for p in model.parent.iterdir() if p.is_file()] if model.is_file() else []  # its folder's files
    read = [*inputs, *args.paths, model, *beside, args.explain_model]
    for flag, out in outs:
        refuse_reading(out, flag, read, [model] if model.is_dir() else [])
    if args.explain:
        given = [Path(p) for p in args.paths if Path(p).is_dir()]
        beside_inputs = {Path(i).parent for i in inputs if not any(Path(i).is_relative_to(g) for g in given)}
        holds = [*beside_inputs, *([model.parent] if model.is_file() else [])]
        refuse_reading(args.explain, "--explain", holds, [*given, *([model] if model.is_dir() else [])])


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
