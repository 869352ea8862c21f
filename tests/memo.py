"""Memos for the test processes only: Hydra composes from nothing each time, and the suite composes thousands of times
in its own processes (each stage's main three or four times: the override check, Hydra's mode, the run). The stage
processes the tests start (warm or not) never import this.

- OmegaConf.load by the text it reads: a text seen before is answered with a deep copy of what loading it gave; a
  text not seen before, or one that fails to load, goes to OmegaConf itself, so every YAML error is OmegaConf's own.
- Hydra's composition (ConfigLoaderImpl.load_configuration) by its inputs: the search path (less its providers'
  names and the packages in it that hold no config), the config name, the overrides, the version base, Hydra's
  structured configs (the objects stored: one changed in place is not seen) and whether Hydra's warnings are errors
  (the packages' own files are taken as they are); and by every question it asked the folders of the search path,
  each asked again before a composition is reused: a file's text, whether a path is a file or a folder, what a
  folder lists. A change to any of them composes anew. What Hydra takes from the process at each composition (the
  working folder, the variables hydra.job.env_copy names, the running script's name where the config names no job,
  the search path's list) is taken again, and its checks of the main config source and of sweep overrides run
  again; a composition that fails is never kept, so each error is Hydra's own. A warning Hydra gave while
  composing is not given again when the composition is served. The tests in tests/test_memo.py compare what it
  serves with Hydra's own composition."""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import os
import pickle
import threading

from omegaconf import OmegaConf, open_dict

_LOAD = OmegaConf.load
_LOADED: dict[str, object] = {}  # never handed out: callers change what they get (Hydra pops `defaults`)


def _load(file_):
    if isinstance(file_, (str, os.PathLike)) or not getattr(file_, "seekable", lambda: False)():
        return _LOAD(file_)  # a path, or a stream read once: as OmegaConf reads it
    text = file_.read()
    file_.seek(0)
    if not isinstance(text, str):  # bytes: a file of a zipped package
        return _LOAD(file_)
    if text not in _LOADED:
        _LOADED[text] = _LOAD(file_)
    return copy.deepcopy(_LOADED[text])


KEPT = 256  # compositions kept (pickled: a few tens of kB each, nothing for the garbage collector to walk)
_COMPOSED: collections.OrderedDict[tuple, tuple[list, bytes, bool]] = collections.OrderedDict()
_ASKED = threading.local()  # `now`: what a composition running in this thread was told (the folders' answers)
_SOURCE: dict[str, object] = {}  # FileConfigSource's own methods
_LOCK = threading.RLock()  # the kept compositions and the patching, between threads
ANEW = [0]  # compositions handed to Hydra itself, in this process (tests/test_memo.py counts them)


def _text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _answer(method: str, source, args: tuple):
    """What FileConfigSource answers now: a file's text for load_config, else the method's own answer."""
    if method == "load_config":
        return _text(os.path.realpath(os.path.join(source.path, source._normalize_file_name(args[0]))))
    try:
        return _SOURCE[method](source, *args)
    except OSError as exc:
        return type(exc)


def _asking(method: str):
    own = _SOURCE[method]
    signature = inspect.signature(own)

    def asked(self, *args, **kwargs):
        args = signature.bind(self, *args, **kwargs).args[1:]  # Hydra names them
        try:
            return own(self, *args)
        finally:
            now = getattr(_ASKED, "now", None)
            if now is not None:
                now["log"].append((method, self.provider, self.path, args, _answer(method, self, args)))

    return asked


def _same_answers(log: list) -> bool:
    source = _file_source()
    return all(_answer(m, source(p, path), args) == was for m, p, path, args, was in log)


def _file_source() -> type:
    """The class Hydra reads folders with, its questions recorded. Hydra's plugin scan executes its module again
    (a class of the same name, unpatched): so the one registered is asked for, and patched where it is not yet."""
    from hydra._internal.sources_registry import SourcesRegistry
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the scan, once per process
    with _LOCK:
        source = SourcesRegistry.instance().resolve("file")
        if source.__dict__.get("_recorded") is None:
            for method in ("load_config", "is_group", "is_config", "list"):
                _SOURCE[method] = source.__dict__[method]
                setattr(source, method, _asking(method))
            source._recorded = True
    return source


def _inputs(loader, config_name, overrides, exact: bool) -> tuple:
    """What a composition is keyed by; not `exact`: the search path without the names of its providers and without
    the packages that hold no config (a stage's own, where its folder has no conf/), which answer no question."""
    from hydra import version
    from hydra.core.config_store import ConfigStore

    def nodes(node: dict, under: str = "") -> tuple:  # each structured config, by the object stored
        return tuple(
            x
            for k, v in node.items()
            for x in (nodes(v, f"{under}/{k}") if isinstance(v, dict) else [(f"{under}/{k}", id(v))])
        )

    sources = loader.repository.get_sources()
    if exact:
        searched = tuple((s.scheme(), s.path, s.provider) for s in sources)
    else:
        searched = tuple((s.scheme(), s.path) for s in sources if not (s.scheme() == "pkg" and _inert(s.path)))
    strict = os.environ.get("HYDRA_DEPRECATION_WARNINGS_AS_ERRORS")  # a warning Hydra raises instead
    return searched, config_name, tuple(overrides), version.getbase(), nodes(ConfigStore.instance().repo), strict


@functools.cache
def _inert(package: str) -> bool:
    """Whether the installed `package` holds no config a search could find: no YAML file and no folder but
    Python's caches, at any depth."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    for top in spec.submodule_search_locations or [] if spec else []:
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = [d for d in subfolders if d != "__pycache__"]
            if subfolders and folder == top or any(f.endswith((".yaml", ".yml")) for f in files):
                return False
    return spec is not None


def _sources_of(cfg) -> list:
    return [(x.path, x.schema, x.provider) for x in cfg.hydra.runtime.config_sources]


def _composing(own):
    """load_configuration, memoised. The run mode changes a composition only where a group's option is `???`
    (skipped by -m, an error otherwise): a composition that skipped none serves either mode, and one that did is
    kept for its own mode only. The job's name is Hydra's (the script's) unless the config sets one: where it was
    asked for, it is asked for again. The search path's own list (hydra.runtime.config_sources) is the loader's,
    where no hydra.searchpath added to it: such a composition is kept without the providers' names, and serves a
    search path that differs in them or in packages that hold no config."""
    from hydra.conf import ConfigSourceInfo
    from hydra.core.utils import JobRuntime

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        inputs = {exact: _inputs(self, config_name, overrides, exact) for exact in (False, True)}
        keys = [(*inputs[exact], mode) for exact in (False, True) for mode in (None, run_mode)]
        with _LOCK:
            key = next((k for k in keys if k in _COMPOSED and _same_answers(_COMPOSED[k][0])), None)
            if key is not None:
                _COMPOSED.move_to_end(key)
                _, blob, named = _COMPOSED[key]
        if key is not None:
            self.ensure_main_config_source_available()
            if validate_sweep_overrides:
                from hydra.core.override_parser.overrides_parser import OverridesParser

                parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
                self.validate_sweep_overrides_legal(overrides=parsed, run_mode=run_mode, from_shell=from_shell)
            cfg = pickle.loads(blob)
            with open_dict(cfg.hydra):  # what Hydra takes from the process each time
                for name in cfg.hydra.job.env_copy:
                    cfg.hydra.job.env_set[name] = os.environ[name]
                cfg.hydra.runtime.cwd = os.getcwd()
                if named:
                    cfg.hydra.job.name = JobRuntime.instance().get("name")
                if keys.index(key) < 2:  # kept without the providers' names: no hydra.searchpath added to them
                    cfg.hydra.runtime.config_sources = [
                        ConfigSourceInfo(path=s.path, schema=s.scheme(), provider=s.provider)
                        for s in self.repository.get_sources()
                    ]
            return cfg
        ANEW[0] += 1
        _file_source()
        outer, _ASKED.now = getattr(_ASKED, "now", None), {"log": [], "named": False, "skipped": False, "other": False}
        try:
            cfg = own(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
            now = _ASKED.now
            if not now["log"] or now["other"]:  # no folder asked (packages alone), or the runtime asked otherwise
                return cfg
            loaders = [(s.path, s.scheme(), s.provider) for s in self.repository.get_sources()]
            exact = _sources_of(cfg) != loaders  # hydra.searchpath added some
            key = (*inputs[exact], run_mode if now["skipped"] else None)
            with _LOCK:
                _COMPOSED[key] = (now["log"], pickle.dumps(cfg), now["named"])
                _COMPOSED.move_to_end(key)
                while len(_COMPOSED) > KEPT:
                    _COMPOSED.popitem(last=False)
            return cfg
        finally:
            _ASKED.now = outer

    return load_configuration


def _noting(own, what):
    """Hydra's `own`, noting in the composition running in this thread what `what` makes of its answer."""

    def noted(*args, **kwargs):
        answer = own(*args, **kwargs)
        now = getattr(_ASKED, "now", None)
        if now is not None:
            now.update(what(args, kwargs, answer))
        return answer

    return noted


_COMPOSING = None  # Hydra's own load_configuration, once installed


def install() -> None:
    global _COMPOSING
    if _COMPOSING is not None:
        return
    from hydra._internal import defaults_list
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.utils import JobRuntime

    OmegaConf.load = staticmethod(_load)
    _COMPOSING = ConfigLoaderImpl.load_configuration
    ConfigLoaderImpl.load_configuration = _composing(_COMPOSING)
    JobRuntime.get = _noting(JobRuntime.get, lambda args, _, __: {"named" if args[1:] == ("name",) else "other": True})
    defaults_list._check_not_missing = _noting(
        defaults_list._check_not_missing, lambda _, __, skip: {"skipped": True} if skip else {}
    )
