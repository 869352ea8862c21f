"""Compose conf/ the way DVC does, so params.yaml can be regenerated and checked.

`python -m imgclf.config [OVERRIDE ...]` prints the composition (what `make params` writes).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONF_DIR = "conf"


def conf_dir(root: str | Path = ".") -> Path:
    """Absolute path of the project's conf/ directory."""
    return (Path(root) / CONF_DIR).resolve()


def compose(overrides: Sequence[str] = (), root: str | Path = ".") -> DictConfig:
    """Compose conf/config.yaml with overrides, resolved (DVC's `compose_and_dump`, minus the dump)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir(root)), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def params_yaml(overrides: Sequence[str] = (), root: str | Path = ".") -> str:
    """The text DVC writes to params.yaml for these overrides."""
    return OmegaConf.to_yaml(compose(overrides, root))


def config_groups(root: str | Path = ".") -> dict[str, list[str]]:
    """Config groups of conf/ and their options: {"model": ["alexnet", "vgg16"], ...}."""
    base = conf_dir(root)
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(base.iterdir()) if d.is_dir()
    }


if __name__ == "__main__":
    sys.stdout.write(params_yaml(sys.argv[1:]))
