"""dvc.yaml lists, for each stage, exactly the code it runs: its import closure plus what its config reaches
through `_target_` (data sources, schedules). A module added, removed or newly imported fails here."""

import ast
import re

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"


def module_file(name):
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name):
    """imgclf modules `name` imports (anywhere in the file: lazy imports run too), and their packages."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
    found = {m for m in found if m.startswith("imgclf") and module_file(m)}
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def closure(modules):
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen and module_file(name):
            seen.add(name)
            todo.extend(imported_modules(name))
    return seen


def targets(node):
    """Modules named by `_target_` anywhere in a config tree."""
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str) and value.startswith("imgclf."):
                found.add(value.rsplit(".", 1)[0])
            found |= targets(value)
        return found
    if isinstance(node, list):
        return set().union(*map(targets, node)) if node else set()
    return set()


def instantiated_targets(stage):
    """The `_target_` modules a stage can reach: every option of each config node it calls instantiate() on."""
    found = set()
    code = "".join(module_file(m).read_text() for m in closure({f"imgclf.stages.{stage}"}))  # _build.py too
    for dotted in re.findall(r"instantiate\(cfg\.([\w.]+)", code):
        group, *rest = dotted.split(".")
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            node = yaml.safe_load(option.read_text())
            for key in rest:
                node = (node or {}).get(key, {})
            found |= targets(node)
    return found


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_the_stages_import_closure(stage):
    spec = STAGES[stage]
    expected = closure({f"imgclf.stages.{stage}"} | instantiated_targets(stage))
    listed = {d for d in spec["deps"] if d.startswith("src/")}
    assert listed == {module_file(m).relative_to(ROOT).as_posix() for m in expected}


def test_config_targets_are_followed():
    assert {
        "imgclf.data.digits",
        "imgclf.data.mnist",
        "imgclf.data.cifar10",
        "imgclf.data.dogs_vs_cats",
        "imgclf.data.folder",
    } == instantiated_targets("fetch")
    assert instantiated_targets("train") == {"imgclf.optim"}  # the schedules; conf/optim names torch.optim
