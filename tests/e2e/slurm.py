"""A one-node SLURM cluster of the test suite's own: munge with its own key and socket, slurmctld and slurmd on
loopback ports, state, spool and logs in one directory, no accounting, no cgroups. `SLURM_CONF` in a process's
environment points sbatch, srun, squeue and scontrol (and submitit, which calls them) at it.

The node offers 4 CPUs whatever the machine has (`config_overrides`), so a 2-task job and two 1-CPU workers run
on 2 cores. Debian's slurmctld, slurmd, slurm-client and munge packages (`make slurm`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from imgclf.tracking.server import free_port

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")

# MinJobAge: `sbatch --wait` polls every 2 s, then 8 s, then 32 s, unless finished jobs are kept less than 8 s
# (SLURM's sbatch.c): kept 4 s, it polls every 2 s, and returns within 2 s of the job's end, not up to 32 s later
CONF = """\
ClusterName=imgclf-test
MinJobAge=4
SlurmctldHost={node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> list[str]:
    return [p for p in PROGRAMS if not shutil.which(p) and not Path("/usr/sbin", p).exists()]


def program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.node = socket.gethostname().split(".")[0]
        self.conf = directory / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this cluster (sbatch exports it on to the jobs)."""
        return {"SLURM_CONF": str(self.conf)}

    def _daemon(self, *args: str, log: str) -> None:
        out = open(self.dir / "log" / log, "w")  # noqa: SIM115 - the daemon's for its life
        self.procs.append(
            subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **self.env))
        )

    def start(self) -> SlurmCluster:
        for sub in ("munge", "state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "munge").chmod(0o711)  # munged: its socket's directory must be reachable by every user
        key = self.dir / "munge" / "munge.key"
        subprocess.run([program("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
        key.chmod(0o400)
        munge = self.dir / "munge"
        self._daemon(
            program("munged"),
            "--foreground",
            "--force",  # root, and a key outside /etc/munge
            f"--key-file={key}",
            f"--socket={munge}/munge.socket",
            f"--pid-file={munge}/munged.pid",
            f"--seed-file={munge}/munged.seed",
            f"--log-file={munge}/munged.log",
            log="munged.out",
        )
        self.conf.write_text(
            CONF.format(node=self.node, user=getpass.getuser(), ctld_port=free_port(), d_port=free_port(), dir=self.dir)
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged")
        self._daemon(program("slurmctld"), "-D", "-i", "-f", str(self.conf), log="slurmctld.out")
        self._daemon(program("slurmd"), "-D", "-N", self.node, "-f", str(self.conf), log="slurmd.out")
        self._wait(self._idle, "the node to be idle")
        return self

    def _idle(self) -> bool:
        info = subprocess.run(
            [program("sinfo"), "--noheader", "-o", "%t"],
            capture_output=True,
            text=True,
            env=dict(os.environ, **self.env),
        )
        return info.stdout.strip() == "idle"

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f.read_text()[-1500:] for f in sorted((self.dir / "log").glob("*")))
                raise RuntimeError(f"SLURM test cluster: waiting for {what}; exited: {dead}\n{logs}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text()[-3000:]}" for f in sorted((self.dir / "log").glob("*")))

    def stop(self) -> None:
        subprocess.run([program("scancel"), "--full", "--user", getpass.getuser()], env=dict(os.environ, **self.env))
        # slurmd and slurmctld first, munged last: a slurm daemon shutting down still authenticates through munge
        # (all signalled at once, slurmd outlived the 20 s wait below after every job and was killed)
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in self._strays():  # job steps (slurmstepd) slurmd left behind: nothing of this cluster outlives it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _strays(self) -> list[int]:
        """Processes started with this cluster's SLURM_CONF (the daemons' environment), other than this one."""
        mine, found = f"SLURM_CONF={self.conf}".encode(), []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mine in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found
