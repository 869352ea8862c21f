"""OmegaConf resolvers for conf/, registered wherever Hydra composes: Hydra imports every module under
`hydra_plugins` when it starts, in our stages, in `make params` and in DVC's own `dvc exp run -S` composition.

`${imgclf.dep:${data.val_path}}`: the path of an external input for dvc.yaml's deps, or conf/no_input.md when the
input is not set (DVC cannot interpolate null into a dependency; that file never changes).

`${oc.env:NAME}` is OmegaConf's own, except for a variable holding a secret (MLFLOW_TRACKING_PASSWORD, KAGGLE_KEY:
imgclf.credentials.secret_variable), or one whose value is a URL holding a password (DATABASE_URL): resolved, the
secret would be the run's name, an MLflow param, or a line DVC writes into params.yaml before any stage starts;
this is the one place that sees it in time.
"""

import os

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from omegaconf.resolvers import oc

from imgclf.credentials import secret_interpolation, url_secret
from imgclf.errors import BadInput

NO_INPUT = "conf/no_input.md"


class SecretInConfig(InterpolationResolutionError, BadInput):
    """A config value reads a secret's variable: one line (BadInput), raised as OmegaConf's own resolution error,
    which it passes on unwrapped (with the key's `full_key:` lines added, left out of the one line)."""

    def __str__(self) -> str:
        return super().__str__().splitlines()[0]


def dependency(path: str | None) -> str:
    return os.path.expanduser(str(path)) if path else NO_INPUT


def environment(key: str, default=oc._DEFAULT_MARKER_, *, _node_=None):
    """OmegaConf's oc.env, refusing a variable that holds a secret."""
    name = _node_._get_full_key(None) if _node_ is not None else "a config value"
    if why := secret_interpolation(name, f"${{oc.env:{key}}}"):
        raise SecretInConfig(why)
    value = oc.env(key, default)
    if isinstance(value, str) and url_secret(value):  # DATABASE_URL=postgresql://u:pw@host/db, or ?password=
        raise SecretInConfig(
            f"{name}: ${{oc.env:{key}}} holds a URL with a password, which would be logged and written with the "
            "config; give the password to the tool that reads it (PGPASSWORD or ~/.pgpass for PostgreSQL, "
            "MLFLOW_TRACKING_PASSWORD for a server) and the URL without it"
        )
    return value


OmegaConf.register_new_resolver("imgclf.dep", dependency, replace=True)
OmegaConf.register_new_resolver("oc.env", environment, replace=True)
