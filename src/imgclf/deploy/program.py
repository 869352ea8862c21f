"""The torch.export program (model.pt2): written through Python's file API, read only when it holds data, not code.

`torch.export.load` can run code from the file in several ways: payloads marked `use_pickle` (unpickled with
`weights_only=False`), a sample-inputs pickle that falls back to `weights_only=False`, pickled custom and opaque
objects, AOTInductor libraries, the `guards_code` strings it `exec`s, shape expressions it hands to
`sympy.sympify` (which `eval`s), and node targets resolved by attribute path from the `torch` module (any function
reachable from it, `os.system` included). `check_program` reads the archive first and refuses all of those: what
`export` writes (ATen operators, tensors, linear integer shape expressions) passes, anything else is refused in one
line. torch then reads a copy of the archive rebuilt in memory from exactly the entries that were checked, so no
difference between two zip readers (a name cut at a NUL by one and not the other, a duplicate name) can show the
check one file and torch another.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

from imgclf.archives import ArchiveRefused, checked_zip
from imgclf.errors import BadInput

# the archive's files below its root folder: the program, its tensors and their configs, and nothing else
ALLOWED_FILES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[\w.-]+"
)
# graph nodes may call ATen operators and take items of their tuple outputs; nothing else resolves to a callable
ALLOWED_TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+|_operator\.getitem")
# what a shape expression may contain: linear integer arithmetic on shape symbols (a batch size, its multiples and
# sums), as sympy's constructors; no powers, floats or precision arguments, whose evaluation can take for ever
SYMPY_CALLS = {"Symbol", "Integer", "Add", "Mul", "Max", "Min", "FloorDiv", "Mod", "CeilDiv", "PythonMod"}
SYMBOL_KEYWORDS = {"positive", "integer", "nonnegative"}
SYMBOL = re.compile(r"[a-z]\d{1,6}")  # s0, s77, u3: the names torch gives shape symbols
MAX_CONSTANT = 2**31
MAX_EXPRESSION = 1_000  # characters
SAFE_AST = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
            ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.USub)  # fmt: skip
MAX_JSON_BYTES = 256 << 20  # the program's graph; a VGG16's is well under 1 MB
_LOAD_LOCK = threading.Lock()


def save_program(program, path: Path) -> None:
    """`torch.export.save` into memory, then one ordinary write: a full disk is an OSError (one line from the
    caller's atomic writer), not a failed C++ stream writer aborting the process."""
    import torch

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_program(path: str | Path):
    """A saved .pt2 program as a callable module, after `check_program`; never unpickles anything. Memory: the
    archive's size once more while it loads (the checked copy torch reads: its entries are stored, not compressed,
    so they take no more than the file)."""
    import torch

    path = Path(path)
    with open(path, "rb") as f:
        checked = check_program(f, path)
    with _LOAD_LOCK, _forced_weights_only():
        program = torch.export.load(checked)
    return program.module()


def check_program(f, path: Path) -> io.BytesIO:
    """The archive rebuilt from its checked entries, for torch to read; BadInput, naming `path` and the part
    refused, unless it holds only what export writes."""
    try:
        archive = checked_zip(f)  # entries stored, within the file's size: the copy torch reads is no larger
    except ArchiveRefused as exc:
        raise _refused(path, str(exc)) from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refused(path, f"not a torch.export archive ({exc})") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        names = [i.orig_filename for i in infos]
        if any(i.orig_filename != i.filename for i in infos) or len(set(names)) != len(names) or not names:
            raise _refused(path, "its file names are not plain and distinct (a NUL in one, or one twice)")
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1:
            raise _refused(path, "not a torch.export archive (one root folder expected)")
        root = roots.pop() + "/"
        for name in names:
            if not name.startswith(root) or not ALLOWED_FILES.fullmatch(name[len(root) :]):
                raise _refused(path, f"it holds {name[len(root) :]!r}, which torch.export.load would run or unpickle")
        for kind in ("weights", "constants"):
            _check_payloads(_json(archive, f"{root}data/{kind}/model_{kind}_config.json", path), kind, path)
        _check_sample_inputs(archive, f"{root}data/sample_inputs/model.pt", path)
        _check_graph(_json(archive, f"{root}models/model.json", path), path)
        return _rebuilt(archive, infos, path)


def _rebuilt(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: Path) -> io.BytesIO:
    """The checked entries, and only those, in a new archive written by Python's zipfile (stored, as torch's)."""
    out = io.BytesIO()
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as clean:
            for info in infos:
                clean.writestr(info.orig_filename, archive.read(info))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # a CRC or a size that lies
        raise _refused(path, f"it cannot be read whole ({exc})") from None
    out.seek(0)
    return out


def _json(archive: zipfile.ZipFile, name: str, path: Path) -> Any:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _refused(path, f"{name.split('/', 1)[1]} is missing") from None
    if info.file_size > MAX_JSON_BYTES:
        raise _refused(path, f"{name.split('/', 1)[1]} is {info.file_size} bytes")
    try:
        return json.loads(archive.read(name))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise _refused(path, f"{name.split('/', 1)[1]} is not readable JSON ({exc})") from None


def _check_payloads(config: Any, kind: str, path: Path) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refused(path, f"its {kind} config is malformed")
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refused(path, f"{kind} entry {fqn!r} is a pickle, which loading would run")
        if not re.fullmatch(prefix + r"\d+", str(meta.get("path_name"))):
            raise _refused(path, f"{kind} entry {fqn!r} is not a plain tensor")


def _check_sample_inputs(archive: zipfile.ZipFile, name: str, path: Path) -> None:
    """torch reads them weights-only first and falls back to a full unpickle: only a file the first reads passes.
    They are kept: from their shapes `.module()` makes the guards that check each call's inputs. A torch.save
    archive of their own, checked as the program is before torch reads it: stored inside stored, it could still
    unpack to any size."""
    import pickle

    import torch

    if name not in archive.namelist():
        return
    inputs = io.BytesIO(archive.read(name))
    try:
        checked_zip(inputs).close()
        inputs.seek(0)
        torch.load(inputs, map_location="cpu", weights_only=True)
    except ArchiveRefused as exc:
        raise _refused(path, f"its sample inputs: {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refused(path, f"its sample inputs are not plain tensors ({detail[:200]})") from None


def _check_graph(program: Any, path: Path) -> None:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refused(path, "models/model.json is not an exported program")
    if program.get("guards_code"):
        raise _refused(path, "it carries guard code, which loading would execute")
    for node in program["graph_module"].get("graph", {}).get("nodes", []):
        target = node.get("target") if isinstance(node, dict) else None
        if not isinstance(target, str) or not ALLOWED_TARGET.fullmatch(target):
            raise _refused(path, f"its graph calls {str(target)[:120]!r}; only ATen operators are loaded")
    for expr in _values(program, "expr_str"):
        if not _safe_expression(expr):
            raise _refused(path, f"shape expression {str(expr)[:120]!r} is not a plain integer expression")


def _values(node: Any, key: str):
    """Every value stored under `key`, anywhere in a JSON document."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if k == key:
                    yield v
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def _safe_expression(expr: Any) -> bool:
    """True when `expr` parses to calls of SYMPY_CALLS on numbers, symbol names and arithmetic: sympify's eval of
    it can then only build a sympy expression."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPRESSION:
        return False
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, SAFE_AST):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS):
            return False
        if isinstance(node, ast.Name) and node.id not in SYMPY_CALLS and not SYMBOL.fullmatch(node.id):
            return False
        if isinstance(node, ast.keyword) and node.arg not in SYMBOL_KEYWORDS:
            return False
        if isinstance(node, ast.Constant) and not _plain_constant(node.value):
            return False
    return True


def _plain_constant(value: Any) -> bool:
    """A symbol's name, a flag, or an integer of a size a shape can have."""
    if isinstance(value, str):
        return bool(SYMBOL.fullmatch(value))
    if isinstance(value, bool):
        return True
    return isinstance(value, int) and abs(value) < MAX_CONSTANT


class _forced_weights_only:
    """Every torch.load inside (torch.export.load's own included) is weights-only, whatever its caller asks: a
    second lock on the door `check_program` already shut."""

    def __enter__(self):
        self.saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = self.saved


def _refused(path: Path, why: str) -> BadInput:
    return BadInput(f"{path}: refused: {why}; only .pt2 programs as `imgclf export` writes them are loaded")
