"""What a sweep on SLURM (+launcher=slurm: Hydra's submitit launcher) needs from this machine, checked before the
sweep creates anything: submitit's own failures come after its folder and the parent run exist, as tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from imgclf.errors import MissingInput

LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
# submitit submits with sbatch and refuses to start without srun; scontrol (the same client package) asks the controller
PROGRAMS = ("sbatch", "srun", "scontrol")
PING_S = 30.0  # scontrol waits out its MessageTimeout (10 s by default) per controller; a refused port is instant
INSTEAD = "run the sweep on a SLURM login node, or on this machine with hydra/launcher=joblib"


def check_cluster(launcher: str) -> None:
    """Raise MissingInput in one line when `launcher` (hydra.launcher._target_) is the SLURM one and this machine
    cannot submit: SLURM's commands not on PATH, or no controller answering `scontrol ping` (sbatch itself retries
    an absent controller for seconds, then fails after the sweep has started)."""
    if launcher != LAUNCHER:
        return
    absent = [p for p in PROGRAMS if shutil.which(p) is None]
    if absent:
        raise MissingInput(f"+launcher=slurm: {', '.join(absent)} not found on PATH; {INSTEAD}")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # SLURM's commands retry a missing slurm.conf for a minute
        raise MissingInput(f"+launcher=slurm: SLURM_CONF={conf} is not a file; {INSTEAD}")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PING_S)
    except subprocess.TimeoutExpired:
        raise MissingInput(f"+launcher=slurm: no SLURM controller answered within {PING_S:g} s; {INSTEAD}") from None
    if ping.returncode == 0 or " is UP" in ping.stdout:  # a backup controller may answer for a primary that is down
        return
    lines = [line for line in (ping.stdout + ping.stderr).splitlines() if line.strip() and not line.startswith("*")]
    why = lines[-1] if lines else f"exit {ping.returncode}"  # `... is DOWN` or `fatal: ...` (no slurm.conf found)
    raise MissingInput(f"+launcher=slurm: no SLURM controller answers (scontrol ping: {why}); {INSTEAD}")
