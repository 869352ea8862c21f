"""A stage's command line before Hydra sees it: the workspace's experiment (params.yaml) under the user's overrides,
flags where Hydra's parser takes them, then the overrides and the values they give checked, each mistake one line."""

from __future__ import annotations

import sys

import yaml
from hydra.errors import HydraException

from imgclf.config import check_overrides, checked_config, split_argv
from imgclf.credentials import redact_overrides, strip_overrides
from imgclf.errors import BadConfig, BadInput
from imgclf.options import Options
from imgclf.workspace import OFF, with_workspace


def checked_argv() -> None:
    """sys.argv as Hydra takes it, under the workspace's experiment, checked: the overrides, then the values."""
    try:  # the experiment applied in this workspace (params.yaml), under the user's own overrides
        argv, carried = with_workspace(sys.argv[1:])
    except (BadInput, HydraException, yaml.YAMLError) as exc:  # conf/ not composing: the override check says why
        exit_if(str(exc) if isinstance(exc, BadInput) else check_overrides([]) or str(exc).splitlines()[0], 2)
    flags, given = split_argv(strip_overrides(argv))  # before Hydra or a line shows them; flags first: Hydra's
    bare = [f for i, f in enumerate(flags) if f in ("--info", "-i") and flags[i + 1 : i + 2] == []]  # last, or it
    flags = [f for f in flags if f not in bare]  # takes the first override as what to show
    sys.argv[1:], carried = [*flags, *given, *bare], strip_overrides(carried)  # parser takes no override before -m
    if carried:  # secrets shown as *** (a key's value, a URL's user:password): the override check refuses them next
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in redact_overrides(carried))  # no ESC, NUL
        print(f"workspace: params.yaml is conf/ plus {shown} ({OFF}=0: conf/ alone)", file=sys.stderr)
    error, cfg = checked_config(sys.argv[1:], stage=True)  # before Hydra: its errors are many lines, and exit 1
    exit_if(error, 2)
    if cfg is not None:  # its values too, before Hydra makes a run folder (outputs/DATE/TIME) for a refused one
        try:
            Options.from_config(cfg)
        except BadConfig as exc:
            exit_if(str(exc), 1)


def exit_if(error: str | None, code: int) -> None:
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(code)
