"""A team's tracking server on one machine: PostgreSQL (a cluster of its own in a directory) as MLflow's backend
store, proxied artifacts on local disk, both bound to 127.0.0.1 unless told otherwise.

`make mlflow-server` runs `python -m imgclf.tracking.server`; the tests start the same thing in a temporary directory.
PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user Debian's package creates.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import MissingInput
from imgclf.net import cannot_listen

PG_USER = "postgres"
DATABASE = "mlflow"
OPTUNA_DATABASE = "optuna"  # a second database in the same cluster: the team's Optuna studies


def pg_bin(name: str) -> str:
    """A PostgreSQL program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise MissingInput(f"PostgreSQL's {name} not found; install it: apt-get install postgresql")
    return found


def _as_pg_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A PostgreSQL cluster in `directory`, listening on `host`:`port` only (trust authentication: loopback)."""

    directory: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def uri(self) -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{DATABASE}"

    @property
    def optuna_uri(self) -> str:
        """The team's Optuna studies (hydra.sweeper.storage / IMGCLF_OPTUNA_STORAGE), through psycopg 3."""
        return f"postgresql+psycopg://{PG_USER}@{self.host}:{self.port}/{OPTUNA_DATABASE}"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_pg_user(list(args)), check=True, capture_output=True, text=True)

    def start(self) -> Postgres:
        data = self.directory / "data"
        if os.geteuid() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.directory, PG_USER, PG_USER)
        if not (data / "PG_VERSION").is_file():
            self._run(pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={self.host}"
        log = self.directory / "postgres.log"
        self._run(pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        for database in (DATABASE, OPTUNA_DATABASE):
            created = subprocess.run(
                _as_pg_user([pg_bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", PG_USER, database]),
                capture_output=True,
                text=True,
            )
            if created.returncode and "already exists" not in created.stderr:
                raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        return self

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")


def server_env() -> dict[str, str]:
    """MLflow's job runner (GenAI evaluation jobs: five huey consumers) is not used by imgclf: off unless asked."""
    return dict(
        os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    )


@dataclass
class MlflowServer:
    """`mlflow server` in a process group of its own (so a test can kill all of it, workers included)."""

    backend_uri: str
    artifacts: Path
    port: int
    host: str = "127.0.0.1"
    log: Path | None = None
    process: subprocess.Popen | None = None
    workers: int = 2  # uvicorn's processes answering requests: 1 runs the app in the server's own process

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        mlflow = str(Path(sys.executable).parent / "mlflow")
        return [
            mlflow,
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout: float = 120.0) -> MlflowServer:
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=server_env()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode} (log: {self.log})")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"mlflow server not answering on {self.uri} after {timeout:.0f} s (log: {self.log})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the server, its workers, its job runner) and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait()
        self.process = None


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imgclf.tracking.server", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".mlflow-server"), help="cluster and artifacts")
    parser.add_argument("--host", default="127.0.0.1", help="the address MLflow binds (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port, on 127.0.0.1 only")
    parser.add_argument(
        "--workers", type=int, default=2, help="MLflow's server processes, each taking requests (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = server_parser()
    args = parser.parse_args(argv)
    for flag, port in (("--port", args.port), ("--pg-port", args.pg_port)):
        if not 1 <= port <= 65535:
            parser.error(f"{flag} {port} is not valid: an integer from 1 to 65535")
    if args.port == args.pg_port:
        parser.error(f"--port and --pg-port are both {args.port}: give each its own")
    if args.workers < 1:
        parser.error(f"--workers {args.workers} is not valid: an integer >= 1")
    root = args.dir.expanduser().resolve()
    why = cannot_listen(args.host, args.port) or cannot_listen("127.0.0.1", args.pg_port, "--pg-port")
    if why is None and root.exists() and not root.is_dir():
        why = f"--dir {root} is a file; give a folder (it is made if missing)"
    elif why is None and not root.is_dir():
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            why = f"--dir {root}: {exc.strerror or exc}; give a folder this user can create"
    if why is not None:  # before PostgreSQL starts
        print(f"error: {why}", file=sys.stderr)
        return 1
    try:
        pg = Postgres(root / "postgres", args.pg_port).start()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        why = _why_not(exc, root / "postgres")
        print(f"error: PostgreSQL did not start in {root / 'postgres'}: {why}", file=sys.stderr)
        return 1
    server = MlflowServer(pg.uri, root / "artifacts", args.port, host=args.host, workers=args.workers)
    print(f"PostgreSQL on 127.0.0.1:{args.pg_port} ({root / 'postgres'}); MLflow on {server.uri}", flush=True)
    print(f"send runs there: dvc repro / imgclf train tracking.uri={server.uri}", flush=True)
    print(f"and Optuna studies: IMGCLF_OPTUNA_STORAGE={pg.optuna_uri}", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # stop PostgreSQL on SIGTERM too
    try:
        return subprocess.run(server.command(), check=False, env=server_env()).returncode
    except KeyboardInterrupt:
        return 0
    finally:
        pg.stop()


def _why_not(exc: Exception, directory: Path) -> str:
    """What PostgreSQL said last (its log, else the command's error output), and where to read more."""
    log = directory / "postgres.log"
    said = [*(exc.stderr or "").splitlines()] if isinstance(exc, subprocess.CalledProcessError) else []
    with contextlib.suppress(OSError):
        said += log.read_text(errors="replace").splitlines()[-20:]
    said = [line.strip() for line in said if line.strip() and "Examine the log" not in line]
    return f"{said[-1]} (log: {log})" if said else str(exc)


if __name__ == "__main__":
    sys.exit(main())
