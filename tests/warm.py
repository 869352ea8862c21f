"""A warm interpreter for the stage processes the tests start: `python -m imgclf.stages.<stage> ...` forked from a
process that has already imported torch, torchvision, timm, MLflow, scikit-learn, Hydra and the rest (about 4 s of
CPU a stage process spends before its first line of work, the larger part of what the suite's processes cost).

`shim()` starts this worker's warm process on first use and returns a folder holding a `python` program to put first
on PATH. That program runs any command line as the real interpreter does (it execs it), except `-m imgclf.stages.*`
and `-m` of the module joblib's loky starts its workers with (a sweep's jobs under hydra/launcher=joblib), which it
hands to the warm process with its arguments, working folder, environment, umask, resource limits and every file
descriptor it was started with (as exec keeps them: the standard streams, a loky worker's pipes): the warm process
forks, and the child runs the module's real `__main__` through runpy, as `python -m` does, in a process of its own,
with `sys.executable` this program (so the workers a stage starts with it run warm too). Nothing of imgclf is
imported before the fork (the code under test is read fresh); the warm process is used only when every variable
read while those libraries were imported (PYTHON*, OMP_*, ...) is the same as the caller's, and otherwise the real
interpreter runs the command. Signals the program receives go to the child, and the child's exit (its code, or the
signal that ended it) is the program's. A SIGKILL of the program alone kills the child only a moment later (the
warm process sees its connection close), so a test SIGKILLs a stage with `kill(proc)`: the child records its pid
under its caller's before it runs, and both get SIGKILL at once. Fresh interpreters still run every stage in the
end-to-end pipeline test's first `dvc exp run` (`fresh`), and torchrun's and SLURM's processes.

Run as a script, this file is the warm process: `python tests/warm.py SOCKET`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what a stage imports before its first line of work (the warm process imports them once)
PRELOAD = (
    "numpy",
    "PIL.Image",
    "torch",
    "torchvision",
    "torch._dynamo",
    "timm",
    "kornia.augmentation",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "matplotlib.pyplot",
    "hydra",
    "omegaconf",
    "onnx",
    "onnxruntime",
    "pandas",
)
# variables read while those are imported: where the caller's differ, the real interpreter runs the command
IMPORT_TIME = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "TORCH", "CUDA", "LD_", "MALLOC", "MPL", "XDG_CACHE_HOME")
LIMITS = [name for name in dir(__import__("resource")) if name.startswith("RLIMIT_")]
# the modules run warm: the stages, and the workers joblib's loky starts for a sweep's jobs (hydra/launcher=joblib)
WARM = ("imgclf.stages.", "joblib.externals.loky.backend.popen_loky_posix")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

PROGRAM = """#!{python} -IS
import os, signal, socket, struct, sys, json, resource
REAL, SOCKET = {python!r}, {socket!r}
args = sys.argv[1:]
if len(args) < 2 or args[0] != "-m" or not args[1].startswith({modules!r}):
    os.execv(REAL, [REAL, *args])
fds = []  # every file descriptor this program was started with, as exec keeps them (a loky worker's pipes)
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        os.fstat(int(name))
        fds.append(int(name))
    except OSError:  # the listing's own, closed since
        pass
limits = {{n: resource.getrlimit(getattr(resource, n)) for n in {limits!r}}}
mask = os.umask(0)
os.umask(mask)
request = json.dumps({{"argv": args, "cwd": os.getcwd(), "env": dict(os.environ), "umask": mask, "limits": limits,
                      "caller": os.getpid(), "fds": fds}})
pending, child = [], []
def forward(sig, frame):
    os.kill(child[0], sig) if child else pending.append(sig)
for sig in {signals!r}:
    signal.signal(sig, forward)
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCKET)
    socket.send_fds(conn, [b"fds"], fds)
    body = request.encode()
    conn.sendall(struct.pack("!Q", len(body)) + body)
    reply = conn.makefile("r")
    first = reply.readline().split()
except OSError:
    first = ["real"]
if first[:1] != ["pid"]:  # no warm process, or one started in another environment
    for sig in {signals!r}:
        signal.signal(sig, signal.SIG_DFL)
    os.execv(REAL, [REAL, *args])
child.append(int(first[1]))
for sig in pending:
    os.kill(child[0], sig)
end = reply.readline().split()  # a forwarded signal's handler returns: the read goes on (PEP 475)
if end[:1] == ["signal"]:
    for sig in {signals!r}:
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), int(end[1]))
sys.exit(int(end[1]) if end[:1] == ["exit"] else 1)
"""

RECORDS = "children"  # the warm process's folder, beside its socket, where each child records its pid
CHILDREN = Path()  # in the warm process: that folder
CALLERS: dict[int, int] = {}  # in the warm process: each running child's caller
PROCESS: list[subprocess.Popen] = []  # the warm process, once started (benchmarks/warm_stages.py reads its CPU)
ADDED: dict[str, str] = {}
SESSION: dict[str, str] = {}  # the test session's environment (tests/conftest.py own_cache), not one test's


def remember(environment: dict) -> None:
    """The environment the warm process starts in: the session's, whichever test first needs it."""
    SESSION.clear()
    SESSION.update(environment)


@functools.cache
def shim() -> Path:
    """The folder of this worker's `python` program (see the module's docstring), its warm process started on first
    use and stopped when the worker exits."""
    import atexit

    # a socket's path holds at most 107 bytes: a long TMPDIR's folder would not do
    home = Path(tempfile.mkdtemp(prefix="imgclf-warm-", dir=None if len(tempfile.gettempdir()) < 64 else "/tmp"))
    path = home / "warm.sock"
    warm = subprocess.Popen(
        [sys.executable, __file__, str(path)],
        start_new_session=True,
        cwd=home,  # not the test's folder, which may be gone before the imports ask for it (torch's do)
        env=SESSION or None,
        stdin=subprocess.DEVNULL,
        stdout=open(home / "warm.log", "w"),
        stderr=subprocess.STDOUT,  # noqa: SIM115 - the process's for its life
    )
    atexit.register(_stop, warm, home)
    PROCESS[:] = [warm]
    program = program_in(home)
    program.parent.mkdir()
    program.write_text(
        PROGRAM.format(
            python=sys.executable, socket=str(path), limits=LIMITS, signals=[int(s) for s in FORWARDED], modules=WARM
        )
    )
    program.chmod(0o755)
    deadline = time.monotonic() + 60
    while not path.exists():  # bound before the imports: a caller waits for them in the listen queue
        if warm.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the warm interpreter did not start: {(home / 'warm.log').read_text()[-2000:]}")
        time.sleep(0.01)
    return program.parent


def fresh(env: dict) -> dict:
    """`env` without shim()'s folder on PATH: DVC's stages in fresh interpreters, as a user's run starts them."""
    return dict(env, PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(shim())))


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a command a test started, as `proc.kill(); proc.wait()`, and where it runs warm its stage at the same
    moment (the warm process would kill the stage only once it sees the caller gone); returns when both are gone and
    reaped, as `proc.wait()` leaves a stage run by the real interpreter."""
    record = record_of(proc.pid)
    child = int(record.read_text()) if record.is_file() else None
    if child is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while child is not None and Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.001)  # until the warm process has reaped it


def program_in(home: Path) -> Path:
    """The `python` program of the warm process whose folder is `home`."""
    return home / "bin" / "python"


def record_of(caller: int) -> Path:
    """The file where the warm child of the program with pid `caller` records its own pid, while it runs."""
    return shim().parent / RECORDS / str(caller)


def forks(module: str = "") -> int:
    """How many children the warm process has forked so far (for `module` alone, where given): warm.log's lines
    "PID -m MODULE" ("real ..." for a command it declined)."""
    lines = (shim().parent / "warm.log").read_text().splitlines()
    return sum(line.split(" ", 1)[0].isdigit() and line.split()[2].startswith(module) for line in lines)


def python() -> str:
    """The `python` program of shim(): for a test's own `python -m imgclf.stages.* ...` command line."""
    return str(shim() / "python")


def _stop(warm: subprocess.Popen, home: Path) -> None:
    import shutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(warm.pid, signal.SIGKILL)  # the warm process and any child still running
    warm.wait()
    shutil.rmtree(home, ignore_errors=True)


def _import_env(env: dict) -> dict:
    """What of `env` the imports read, less what they set themselves (a caller that imported them has it too)."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and ADDED.get(k) != v}


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller went away")
        data += chunk
    return data


def _run(request: dict, fds: list[int]) -> int:
    """In the forked child: become the caller's `python -m MODULE ARGS` and run it; the exit code."""
    import atexit
    import resource
    import runpy
    import threading
    import traceback
    import uuid

    record = CHILDREN / str(request["caller"])  # kill() reads it: written before the stage's first line
    record.with_suffix(".tmp").write_text(str(os.getpid()))
    record.with_suffix(".tmp").rename(record)
    for sig in (*FORWARDED, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    import fcntl

    above = max(request["fds"]) + 1  # each one the caller had, at its own number: first out of the way, then placed
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, above) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in zip(request["fds"], moved):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    for name, (soft, hard) in request["limits"].items():
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(getattr(resource, name), (soft, hard))
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in ADDED.items():  # as the imports of a fresh interpreter set them, a session id its own
        os.environ.setdefault(name, uuid.uuid4().hex if name.endswith("SESSION_ID") else value)
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    sys.modules["numpy"].random.seed()  # NumPy's global generator from fresh entropy, as at a fresh import
    sys.path[0] = request["cwd"]
    sys.argv = ["-m", *request["argv"][2:]]
    sys.executable = str(program_in(CHILDREN.parent))  # what the stage starts with it (joblib's workers)
    code = 0
    try:
        runpy._run_module_as_main(request["argv"][1], alter_argv=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        traceback.print_exc()
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code


def serve(path: str) -> None:
    """The warm process: listen on `path`, import PRELOAD, then fork a child per request (see the docstring)."""
    import importlib

    import matplotlib

    global CHILDREN
    CHILDREN = Path(path).parent / RECORDS
    CHILDREN.mkdir()
    started, parent = dict(os.environ), os.getppid()  # as started: the imports set some (torch, scikit-learn)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    matplotlib.use("Agg")
    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # what the imports set (torch's inductor cache folder, MLflow's session id, ...): each child sets it again
    ADDED.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    mine = _import_env(started)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, wake_r, *children.values()], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        for conn in [c for c in ready if c not in (listener, wake_r)]:
            pid = next(p for p, c in children.items() if c is conn)
            if not conn.recv(1):  # the caller was killed: so is its stage
                os.kill(pid, signal.SIGKILL)
        _reap(children)
        if listener in ready:
            _accept(listener, mine, children, (wake_r, wake_w))
    os.killpg(0, signal.SIGKILL)


def _accept(listener: socket.socket, mine: dict, children: dict, wake: tuple[int, int]) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(conn, 16, 64)
        request = json.loads(_read(conn, struct.unpack("!Q", _read(conn, 8))[0]))
    except (OSError, ValueError, ConnectionError):
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    theirs = _import_env(request["env"])
    if theirs != mine or len(fds) != len(request.get("fds", ())) or request["fds"][:3] != [0, 1, 2]:
        differ = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
        print("real", *request["argv"][:2], "differs in", *differ, flush=True)  # warm.log: why it ran cold
        conn.sendall(b"real\n")
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            for fd in wake:
                os.close(fd)
            for other in children.values():
                other.close()
            conn.close()
            code = _run(request, fds)
        finally:
            if code < 0:
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code & 0xFF)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    children[pid], CALLERS[pid] = conn, request["caller"]
    print(pid, *request["argv"][:2], flush=True)  # warm.log: what ran warm


def _reap(children: dict) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            (CHILDREN / str(CALLERS.pop(pid))).unlink()
        end = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        with contextlib.suppress(OSError):
            conn.sendall(f"{end}\n".encode())
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
