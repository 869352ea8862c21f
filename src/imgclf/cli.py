"""`imgclf STAGE [OVERRIDES]` runs a pipeline stage; `imgclf predict PATH...` classifies images."""
from __future__ import annotations

import argparse
import importlib
import sys

STAGES = ("fetch", "split", "train", "evaluate", "export")
COMMANDS = (*STAGES, "predict")


def predict(argv: list[str]) -> int:
    """Classify One / Classify Many: a top-k table per image, or a CSV/JSON file, or a Kaggle submission."""
    from .predict import Classifier, collect_inputs, top_k, write_submission, write_table

    parser = argparse.ArgumentParser(prog="imgclf predict", description=predict.__doc__)
    parser.add_argument("paths", nargs="+", help="images, folders of images, or .txt files listing paths")
    parser.add_argument("--model", default="models/export",
                        help="export dir or model.onnx (default: models/export), or a checkpoint models/model.pt")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="write predictions to a .csv or .json file instead of printing them")
    parser.add_argument("--submission", help="write a Kaggle submission CSV (id,label) for numbered images")
    parser.add_argument("--positive", default="dog", help="class whose probability is the submission's label")
    parser.add_argument("--clip", type=float, default=0.05,
                        help="clip submission probabilities to [clip, 1-clip] (log loss punishes certainty)")
    args = parser.parse_args(argv)
    try:
        classifier = Classifier(args.model)
        preds = classifier.classify(collect_inputs(args.paths), args.batch_size)
        names = classifier.class_names
        if args.submission:
            print(f"wrote {write_submission(preds, names, args.positive, args.clip, args.submission)} rows "
                  f"to {args.submission}")
        elif args.out:
            write_table(preds, names, args.out)
            print(f"wrote {len(preds)} predictions to {args.out}")
        else:
            for pred in preds:
                if pred.probs is not None:
                    print(pred.path)
                    for rank, (name, prob) in enumerate(top_k(pred, names, args.top_k), start=1):
                        print(f"  {rank}. {name:<20s} {prob:7.2%}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [p for p in preds if p.error]
    for pred in failed:
        print(f"error: {pred.path}: {pred.error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(preds)} inputs could not be classified", file=sys.stderr)
    return 1 if failed and len(failed) == len(preds) else 0


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: imgclf {{{','.join(COMMANDS)}}} ...\n"
              "  imgclf STAGE [HYDRA OVERRIDES...]   run a pipeline stage from conf/\n"
              "  imgclf predict PATH... [--out FILE]  classify images with the exported model", file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command == "predict":
        sys.exit(predict(sys.argv[2:]))
    sys.argv = [f"imgclf {command}", *sys.argv[2:]]
    importlib.import_module(f"imgclf.stages.{command}").main()
