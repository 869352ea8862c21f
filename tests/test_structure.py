"""The codebase's shape: thin stages, short functions, few positional parameters, paths in one place."""

import ast

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src" / "imgclf"
MAX_STAGE_LINES = 100
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6
MAX_MODULE_LINES = 400  # about 350: a little over where a split would cut one job in two


def functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SRC).as_posix(), node


@pytest.mark.parametrize("stage", sorted(p.name for p in (SRC / "stages").glob("*.py")))
def test_stage_files_are_entry_points_under_100_lines(stage):
    assert len((SRC / "stages" / stage).read_text().splitlines()) < MAX_STAGE_LINES


def test_no_module_over_400_lines():
    long = [
        f"{path.relative_to(SRC.parent)} ({n} lines)"
        for path in sorted(SRC.parent.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "split it by what changes together"


def test_no_function_over_60_lines():
    long = [
        f"{path}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, fn in functions()
        if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long


def test_no_function_with_more_than_6_positional_parameters():
    wide = []
    for path, fn in functions():
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        if len(names) > MAX_POSITIONAL:
            wide.append(f"{path}:{fn.name}({', '.join(names)})")
    assert not wide, "make the rest keyword-only or group them in a dataclass"


def test_config_reaches_the_library_only_through_stages():
    """Library functions take plain values: only stages/ (and config.py, which composes) touch DictConfig."""
    users = sorted(
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if "DictConfig" in p.read_text() and p.parent.name != "stages"
    )
    # options/ types the config at a stage's edge; sweeps.py: Hydra's callback API hands it the config
    assert users == ["config.py", "options/__init__.py", "tracking/sweeps.py"]


def test_only_the_tracking_package_imports_mlflow():
    importers = sorted(
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if any(line.strip().startswith(("import mlflow", "from mlflow")) for line in p.read_text().splitlines())
    )
    assert importers and all(name.startswith("tracking/") for name in importers), importers


@pytest.mark.slow
def test_the_stages_that_never_track_start_without_mlflow_or_torch():
    """fetch and split, with the Hydra callbacks every stage registers (conf/config.yaml) and the typed options every
    stage builds, import neither MLflow nor torch: the tracking package is lazy, so registering the sweep callback
    costs them no MLflow import, and the optimizer's signature is checked only where it is built."""
    import subprocess
    import sys

    script = (
        "import sys, imgclf.stages.fetch, imgclf.stages.split\n"
        "from hydra.utils import instantiate\n"
        "from omegaconf import OmegaConf\n"
        "for callback in OmegaConf.load('conf/config.yaml').hydra.callbacks.values():\n"
        "    instantiate(callback)\n"
        "from imgclf.config import compose\n"
        "from imgclf.options import Options\n"
        "Options.from_config(compose([]))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'torch'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# what each part of the library may import (its own part included); nothing runs back up. stages/, cli/ and
# reproduce.py compose them all.
BASE = {"errors", "paths", "files", "archives", "targets", "provenance", "contract", "credentials", "devices", "slurm",
        "config", "net", "hydra_run", "workspace", "plots", "analysis", "label_issues"}  # fmt: skip
ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "models": {"base", "data", "models"},
    "inference": {"base", "data", "models", "inference"},
    "tracking": {"base", "tracking"},
    "training": {"base", "data", "models", "inference", "tracking", "training"},
    "deploy": {"base", "data", "models", "inference", "tracking", "deploy"},
}


def part(module: str) -> str | None:
    """base, data, models, inference, tracking, training, deploy; None for the top (stages, options, cli, ...)."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("stages", "cli", "reproduce", "deps", "options", "__init__"):
        return None
    return "base" if parts[0] in BASE else parts[0]


def test_no_import_runs_back_up_between_the_parts():
    import ast

    wrong = []
    for path in SRC.rglob("*.py"):
        module = "imgclf." + path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".").removesuffix(
            ".__init__"
        )
        mine = part(module)
        if mine is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgclf"):
                names = [node.module] if node.module != "imgclf" else [f"imgclf.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("imgclf")]
            for name in names:
                theirs = part(name)
                if theirs is not None and theirs not in ALLOWED[mine]:
                    wrong.append(f"{module} ({mine}) imports {name} ({theirs})")
                elif theirs is None and name != "imgclf":
                    wrong.append(f"{module} ({mine}) imports {name}, above the library")
    assert not wrong, wrong


def test_paths_defaults_are_the_config_and_dvc_yaml_uses_them(compose_cfg):
    from imgclf.paths import Paths

    assert Paths.from_config(compose_cfg().paths) == Paths()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():  # every data, model and report path goes through ${paths.*}
        for kind in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                if not path.startswith("src/"):  # external inputs come from the config (conf/no_input.md if unset)
                    assert path.startswith(("${paths.", "${data.inputs[", "${model.inputs[")), f"{name}.{kind}: {path}"


def test_the_suite_computes_on_one_thread_per_process():
    """tests/__init__.py sets OMP_NUM_THREADS before NumPy or torch is imported, so torch honours it here and in
    every process a test starts (they inherit the environment)."""
    import os

    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


@pytest.mark.parametrize("workers", range(1, 9))
def test_each_worker_starts_on_one_of_the_longest_end_to_end_files(workers):
    """The order `make test` runs in (tests/conftest.py's arrange), cut as pytest-xdist's worksteal cuts it: every
    test once, and each worker's share starts on one of the longest end-to-end files, the longest on the first."""
    from types import SimpleNamespace

    from .conftest import HEAVIEST, arrange, worksteal_shares

    assert all((ROOT / "tests" / "e2e" / name).is_file() for name in HEAVIEST)
    files = [("e2e", name) for name in HEAVIEST] + [("stages", f"test_{i}.py") for i in range(40)]
    files += [("e2e", "test_other.py"), ("data", "test_a.py"), ("deploy", "test_b.py")] * 20
    items = [SimpleNamespace(path=ROOT / "tests" / d / n, n=i) for i, (d, n) in enumerate(reversed(files))]
    order = arrange(items, workers)
    assert sorted(i.n for i in order) == list(range(len(items)))
    sizes = worksteal_shares(len(order), workers)
    starts, first = [], 0
    for size in sizes:
        starts.append(order[first].path)
        first += size
    assert starts[0].name == HEAVIEST[0]
    expected = min(workers, len(HEAVIEST))
    assert len({p.name for p in starts[:expected] if p.parent.name == "e2e"} & set(HEAVIEST)) == expected
    heavy_first = [i for i in order[: sizes[0]] if i.path.name in HEAVIEST]
    assert order[len(heavy_first)].path.parent.name == "stages"  # then the stage tests
    if 1 < workers <= len(HEAVIEST) // 2:  # dealt in snake order: the longest and the shortest of the second lap
        assert [i.path.name for i in heavy_first][:2] == [HEAVIEST[0], HEAVIEST[2 * workers - 1]]


def test_what_runs_write_in_the_project_is_ignored_by_git():
    """Run outputs never show in `git status` (DVC tracks the pipeline's through dvc.lock): the stages' folders
    (conf/config.yaml's paths), Hydra's, the stores, and `imgclf reproduce`'s reproduce/<run id>/."""
    import subprocess

    paths = yaml.safe_load((ROOT / "conf/config.yaml").read_text())["paths"]
    written = [f"{paths[key]}/x" for key in ("models", "reports", "checkpoints")]
    written += ["outputs/2026-01-01/x", "multirun/x", "mlflow.db", "mlruns/1/x", "optuna.db", "reproduce/0a1b/x"]
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=ROOT, capture_output=True, text=True).stdout
    assert ignored.split() == written
