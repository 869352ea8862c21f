"""dvc.yaml's code deps, generated: each stage's import closure (lazy imports and lazy packages too) plus the
modules its config reaches through `_target_`. `make dvc-deps` (`python -m imgclf.deps`) rewrites the `src/` lines
of every stage; tests/test_dvc_yaml.py fails when they drift from the code."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name: str) -> set[str]:
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
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_WHERE"]:
            # a lazy package (PEP 562 __getattr__): `_WHERE` maps each public name to the submodule it comes from
            found.update(f"{package}.{v.value}" for v in node.value.values if isinstance(v, ast.Constant))
    found = {m for m in found if m.startswith("imgclf") and module_file(m)}
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def closure(modules: set[str]) -> set[str]:
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen and module_file(name):
            seen.add(name)
            todo.extend(imported_modules(name))
    return seen


def targets(node) -> set[str]:
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


def instantiated_targets(stage: str) -> set[str]:
    """The `_target_` modules a stage can reach: every option of each config node it calls instantiate() on."""
    found = set()
    code = "".join(module_file(m).read_text() for m in closure({f"imgclf.stages.{stage}"}))  # _build.py too
    # instantiate(opts.data.fetch, ...) in a stage; opts.optim.factory() (imgclf.options instantiates the node)
    for dotted in re.findall(r"instantiate\(opts\.([\w.]+)", code) + re.findall(r"opts\.([\w.]+)\.factory\(\)", code):
        group, *rest = dotted.split(".")
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            node = yaml.safe_load(option.read_text())
            for key in rest:
                node = (node or {}).get(key, {})
            found |= targets(node)
    return found


def code_deps(stage: str) -> list[str]:
    """The `src/` files a stage runs, sorted as dvc.yaml lists them."""
    modules = closure({f"imgclf.stages.{stage}"} | instantiated_targets(stage))
    return sorted(module_file(m).relative_to(ROOT).as_posix() for m in modules)


def rewrite(text: str) -> str:
    """dvc.yaml's text with each stage's `src/` deps replaced by its code_deps, everything else kept."""
    stages = yaml.safe_load(text)["stages"]
    lines = text.split("\n")
    out, stage, written = [], None, False
    for line in lines:
        header = re.fullmatch(r"  (\w+):", line)
        if header and header.group(1) in stages:
            stage, written = header.group(1), False
        if stage and re.match(r"      - src/", line):
            if not written:
                out.extend(f"      - {dep}" for dep in code_deps(stage))
                written = True
            continue
        out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    path = ROOT / "dvc.yaml"
    new = rewrite(path.read_text())
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == path.read_text() else "dvc.yaml's code deps differ from the imports: run make dvc-deps")
    path.write_text(new)
