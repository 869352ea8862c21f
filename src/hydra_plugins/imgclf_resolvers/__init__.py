"""OmegaConf resolvers for conf/, registered wherever Hydra composes: Hydra imports every module under
`hydra_plugins` when it starts, in our stages, in `make params` and in DVC's own `dvc exp run -S` composition.

`${imgclf.dep:${data.val_path}}`: the path of an external input for dvc.yaml's deps, or conf/no_input.md when the
input is not set (DVC cannot interpolate null into a dependency; that file never changes).
"""

import os

from omegaconf import OmegaConf

NO_INPUT = "conf/no_input.md"


def dependency(path: str | None) -> str:
    return os.path.expanduser(str(path)) if path else NO_INPUT


OmegaConf.register_new_resolver("imgclf.dep", dependency, replace=True)
