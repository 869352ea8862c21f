"""`imgclf check -S OVERRIDE...`: a `dvc exp run`'s overrides checked as DVC will compose them, in one line."""

from __future__ import annotations

import argparse
import sys

from imgclf.errors import USER_ERRORS, BadInput


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
