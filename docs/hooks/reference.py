"""MkDocs hook: the Reference pages generated at build time from what they describe, so none can drift.

- reference/configuration.md from conf/: every group, option, key, default and the comment beside it
- reference/cli.md from the console commands' argument parsers (imgclf.cli.parsers) and the stage apps
- reference/stages.md from dvc.yaml: each stage's command, deps, params, outs, metrics and plots
- reference/metrics.md from imgclf.metric_names, which a test holds to what the stages really log

`mkdocs build` calls on_files; tests/test_docs.py calls the page functions directly.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:-][^:#]*?):(?P<rest>.*)$")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A comment as table text: its <placeholders> shown, not taken for HTML."""
    return _cell(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment on its line (and on the comment-only lines indented under it)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if not match:
            stripped = line.strip()
            if last and stripped.startswith("#") and line.index("#") > 0 and found.get(last):
                found[last] += " " + stripped.lstrip("#").strip()  # a continued comment
            elif not stripped.startswith("- "):
                last = None
            continue
        indent, key, rest = len(match["indent"]), match["key"].strip(), match["rest"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        last = ".".join(k for _, k in stack)
        comment = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        found[last] = comment
    return found


def _flatten(node, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict) and node:
        rows = []
        for key, value in node.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, node)]


def _value(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()}`"


def _header(text: str) -> str:
    """The file's leading comment: what the option is for."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _key_table(path: Path) -> list[str]:
    text = path.read_text()
    node = yaml.safe_load(text) or {}
    comments = _comments(text)
    rows = [(k, v) for k, v in _flatten({k: v for k, v in node.items() if k != "defaults"}) if k]
    out = []
    if "defaults" in node:
        starts = [next(iter(d.items())) if isinstance(d, dict) else (d, None) for d in node["defaults"]]
        named = [f"`{k}: {v}`" if v is not None else f"`{k}`" for k, v in starts if k != "_self_"]
        if named:
            out += [f"Starts from: {', '.join(named)}.", ""]
    if rows:
        out += ["| key | default | what it is |", "|---|---|---|"]
        out += [f"| `{k}` | {_cell(_value(v))} | {_prose(comments.get(k, ''))} |" for k, v in rows]
    return out


def _how(group: str, chosen: str | None) -> str:
    if chosen is None:
        return f"optional, off by default: `+{group}=<option>`"
    if " " in chosen:
        return f"{chosen}; `{group}=<option>` overrides it"
    return f"default `{chosen}`"


def configuration_page(conf: Path = ROOT / "conf") -> str:
    """Every group of conf/ with its options, and every key of each option file with its default and comment."""
    root = conf / "config.yaml"
    text = root.read_text()
    config = yaml.safe_load(text)
    chosen = {}
    for entry in config["defaults"]:
        if isinstance(entry, dict):
            chosen.update(entry)
    lines = [
        "# Configuration",
        "",
        "Generated from `conf/` when the site is built: every config group, its options, and each option's keys with",
        "their defaults and comments. `params.yaml` is the composition of these files that DVC tracks; override any",
        "key on the command line (`imgclf train optim.lr=0.001`), with `dvc exp run -S optim.lr=0.001`, or pick an",
        "option of a group (`model=vgg16`). Optional groups are added with `+` (`+experiment=...`, `-m +sweep=...`).",
        "",
        "## `conf/config.yaml`",
        "",
        _prose(_header(text)),
        "",
        "| group | default option |",
        "|---|---|",
    ]
    groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
    for group in groups:
        if group not in chosen:
            pickers = sorted(
                f"{p.parent.name}={p.stem}"
                for p in conf.glob("*/*.yaml")
                if re.search(rf"^\s*- (override )?/{group}@", p.read_text(), re.M)
            )
            chosen[group] = f"each {pickers[0].split('=')[0]} option picks one" if pickers else None
    lines += [f"| [`{g}`](#{g}) | {_how(g, chosen[g])} |" for g in groups]
    lines += ["", *_key_table(root), ""]
    for group in groups:
        options = sorted(p for p in (conf / group).glob("*.yaml"))
        how = _how(group, chosen[group])
        lines += [f"## {group}", "", f"Options: {', '.join(f'`{p.stem}`' for p in options)} ({how}).", ""]
        for base in _bases(conf, options):
            title = f"`{base.name}` (what every {group} option starts from; not an option)"
            lines += [f"### {title}", "", _prose(_header(base.read_text())), "", *_key_table(base), ""]
        for path in options:
            lines += [f"### `{group}/{path.name}`", "", _prose(_header(path.read_text())), "", *_key_table(path), ""]
    return "\n".join(lines) + "\n"


def _bases(conf: Path, options: list[Path]) -> list[Path]:
    """The configs outside every group that options start from (`- /model_base@_here_`): shared keys, no option."""
    found = []
    for path in options:
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            name = entry.split("@")[0].removeprefix("/") if isinstance(entry, str) and entry.startswith("/") else ""
            base = conf / f"{name}.yaml"
            if name and "/" not in name and base.is_file() and base not in found:
                found.append(base)
    return found


def cli_page() -> str:
    """`imgclf` and each console command's --help, from the parsers the commands parse with."""
    from imgclf import cli
    from imgclf.tracking.server import server_parser

    lines = [
        "# Command line",
        "",
        "Generated from the argument parsers when the site is built. `imgclf STAGE [OVERRIDES...]` runs a pipeline",
        f"stage ({', '.join(f'`{s}`' for s in cli.STAGES)}, and `lr-find`) as `python -m imgclf.stages.<stage>`",
        "does: a Hydra app composed from `conf/` (see [Configuration](configuration.md)), with the workspace's",
        "experiment (params.yaml) first and your overrides after; `-m` sweeps, `--cfg job` prints the composition.",
        "",
    ]
    parsers = {**cli.parsers(), "python -m imgclf.tracking.server": server_parser()}
    for name, parser in parsers.items():
        title = name if name.startswith("python") else f"imgclf {name}"
        lines += [f"## `{title}`", "", "```text", _help(parser).rstrip(), "```", ""]
    return "\n".join(lines)


def _help(parser) -> str:
    import os

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # the same page whatever terminal builds it
    try:
        return parser.format_help()
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def stages_page(dvc_yaml: Path = ROOT / "dvc.yaml") -> str:
    """Each stage of dvc.yaml: its command and what DVC hashes (deps, params) and keeps (outs, metrics, plots)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    lines = [
        "# Stages",
        "",
        "Generated from `dvc.yaml` when the site is built. `${...}` are keys of `params.yaml`; a stage reruns when any",
        "of its deps or params changes (its `src/` deps are its import closure, generated by `make dvc-deps`).",
        "",
    ]
    for name, stage in stages.items():
        lines += [f"## {name}", "", "```bash", str(stage["cmd"]).strip(), "```", ""]
        for field in ("deps", "params", "outs", "metrics", "plots"):
            entries = stage.get(field) or []
            if entries:
                shown = [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries]
                lines += [f"**{field}**: " + ", ".join(f"`{e}`" for e in shown), ""]
    return "\n".join(lines)


def metrics_page() -> str:
    """Every metric name the stages log to MLflow and write to reports/<stage>/metrics.json."""
    from imgclf.metric_names import METRICS

    lines = [
        "# Metrics",
        "",
        "Generated from `imgclf.metric_names` when the site is built (a test holds that list to what the stages",
        "log: every logged name matches one pattern below, and every pattern is logged). `<class>` is a class name,",
        "`<format>` an export or optimised format.",
        "",
        "| metric | stage | what it measures |",
        "|---|---|---|",
    ]
    lines += [f"| `{m.pattern}` | {m.stage} | {_prose(m.meaning)} |" for m in METRICS]
    return "\n".join(lines) + "\n"


PAGES = {
    "reference/configuration.md": configuration_page,
    "reference/cli.md": cli_page,
    "reference/stages.md": stages_page,
    "reference/metrics.md": metrics_page,
}


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, page in PAGES.items():
        files.append(File.generated(config, uri, content=page()))
    return files
