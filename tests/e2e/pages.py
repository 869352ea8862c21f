"""The commands of a docs page, as its `bash` blocks list them, run as a user types them: the tutorials' tests run
these, so a page and what the test proves cannot differ."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..conftest import ROOT, console
from .conftest import TINY, sh

BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def page_commands(page: str) -> list[str]:
    """Every command in the page's ```bash blocks: one a line, comments and blank lines dropped."""
    commands = []
    for block in BLOCK.findall((ROOT / "docs" / page).read_text()):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def tiny_exp_run(argv: list[str], replaced: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run` on the tiny network and the sample subset: the -S overrides of the keys in `replaced` (the page's
    model and epochs) give way to the tiny run's."""
    kept, i = [], 0
    while i < len(argv):
        if argv[i] == "-S" and argv[i + 1].split("=", 1)[0] in replaced:
            i += 2
            continue
        kept.append(argv[i])
        i += 1
    return [*kept, *TINY, *(arg for o in extra for arg in ("-S", o))]


def run_page(page: str, repo: Path, env: dict, *, paths: dict, skip: dict, replaced=(), extra=()) -> dict:
    """Run the page's commands in `repo`: `imgclf ...` through the command's own function in this process (see
    tests/conftest.py `console`), the rest as processes. `paths` maps the page's example paths to the test's,
    `skip` names the commands the test does not run and why; `dvc exp run` gets the tiny run's overrides (see
    tiny_exp_run) and `extra` ones. Returns each command's output."""
    from imgclf import cli

    outputs = {}
    for command in page_commands(page):
        if command in skip:
            continue
        text = command
        for example, real in paths.items():
            text = text.replace(example, real)
        argv = shlex.split(text)
        if argv[0] == "imgclf" and argv[1] in ("predict", "runs", "check"):
            done = console(getattr(cli, argv[1]), argv[2:], repo)
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
            outputs[command] = done.stdout + done.stderr
            continue
        assert argv[0] in ("dvc", "make"), f"{page}: the test does not know how to run `{command}`"
        if argv[:3] == ["dvc", "exp", "run"]:
            argv = tiny_exp_run(argv, replaced, extra)
        outputs[command] = sh(argv, repo, dict(env, COLUMNS="200"))  # a wide terminal: make exps' table whole
    return outputs
