"""No command deletes what it did not write: the atomic writers replace a file only with a file and a folder only
with a folder, reach the disk before they rename, and the commands refuse an existing folder given as a file."""

import os
import subprocess
import time

import pytest

from imgclf.errors import BadInput
from imgclf.files import atomic_dir, atomic_files, atomic_path, remove_orphans_in, scratch_dir, write_text
from imgclf.targets import remove_empty, unmakeable_folder

from .conftest import console


def test_a_file_never_replaces_a_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="results is a folder; give a file name"):
        write_text(folder, "x")
    assert (folder / "keep.txt").read_text() == "mine"
    with pytest.raises(BadInput, match="is a file, not a folder"), atomic_dir(folder / "keep.txt"):
        pass
    assert (folder / "keep.txt").read_text() == "mine"


def test_writes_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n")
    assert events == [("fsync", str(tmp)), ("replace", str(target)), ("fsync", str(tmp_path))]
    events.clear()
    with atomic_dir(tmp_path / "export") as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
    assert events[:2] == [("fsync", str(tmp / "model.onnx")), ("fsync", str(tmp))]
    assert events[-2:] == [("replace", str(tmp_path / "export")), ("fsync", str(tmp_path))]


def test_a_folder_output_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_text("half")
        raise RuntimeError("the export failed")
    assert (out / "model.onnx").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_text("new")
    assert (out / "model.onnx").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphans = [tmp_path / f".sample-train-32px-{k}.npy.tmp{dead.pid}" for k in ("aaaa", "bbbb")]
    for orphan in orphans:
        orphan.write_bytes(b"\0" * 100)
    alive = tmp_path / f".x.npy.tmp{os.getppid()}"  # a writer still at work: kept
    alive.write_bytes(b"")
    mine = tmp_path / "pack.npy"
    mine.write_bytes(b"")
    not_ours = tmp_path / f".report.csv.tmp{dead.pid}"  # a folder: the file writer never makes one
    (not_ours / "keep").mkdir(parents=True)
    remove_orphans_in(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, mine.name, not_ours.name])
    write_text(tmp_path / "report.csv", "x")
    assert (not_ours / "keep").is_dir()


def test_a_killed_process_not_yet_reaped_has_ended(tmp_path):
    """A zombie (killed, its parent not yet waiting on it) still answers kill(pid, 0): a run it held stayed RUNNING
    and its temporary files stayed, as a live process's, until a later look after the parent reaped it."""
    from imgclf.files import pid_alive, proc_stat
    from imgclf.tracking.processes import process_gone, process_tag

    child = subprocess.Popen(["sleep", "60"])
    tag = process_tag(child.pid)
    orphan = tmp_path / f".pack.npy.tmp{child.pid}"
    orphan.write_bytes(b"")
    try:
        assert pid_alive(child.pid) and not process_gone(tag)
        remove_orphans_in(tmp_path)
        assert orphan.is_file()  # a writer still at work
        child.kill()
        deadline = time.monotonic() + 30
        while proc_stat(child.pid)[0] != "Z":  # killed, not reaped: this test never waits
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not pid_alive(child.pid) and process_gone(tag)
        remove_orphans_in(tmp_path)
        assert not orphan.exists()
    finally:
        child.kill()
        child.wait()


def test_the_temporary_files_of_writers_on_other_machines_of_a_shared_folder_are_left_alone(tmp_path):
    """A cluster's jobs share data/ over NFS: another node's process id is no process here (its pack being written
    was removed as a killed writer's), and may be this process's own (its twin was removed as a leftover)."""
    from imgclf.files import MACHINE as here

    dead = subprocess.Popen(["true"])
    dead.wait()
    with atomic_path(tmp_path / "pack.npy") as tmp:
        assert tmp.name == f".pack.npy.tmp{os.getpid()}@{here}"
        elsewhere = [tmp_path / f".pack.npy.tmp{pid}@0badc0de" for pid in (dead.pid, os.getpid())]
        for other in elsewhere:
            other.write_bytes(b"another machine's writer at work")
        tmp.write_bytes(b"mine")
    (tmp_path / f".x.npy.tmp{dead.pid}@{here}").write_bytes(b"")  # this machine's killed writers: removed
    (tmp_path / f".y.npy.tmp{dead.pid}").write_bytes(b"")  # as versions before named them
    remove_orphans_in(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pack.npy", *(p.name for p in elsewhere)])


def test_a_stop_asked_while_a_set_of_files_takes_its_place_comes_after_the_last(tmp_path, monkeypatch):
    """SIGTERM (a stage's handler raises KeyboardInterrupt) between two renames left new files beside old ones."""
    import signal

    for name in ("a.json", "b.json", "c.json"):
        (tmp_path / name).write_text("old")

    def stop(*args):
        raise KeyboardInterrupt

    import threading

    renamed, idle = os.replace, threading.Event()
    other = threading.Thread(target=idle.wait)  # the kernel gives a process's signal to any thread: here, this one
    other.start()

    def replace_then_term(src, dst):
        renamed(src, dst)
        signal.pthread_kill(other.ident, signal.SIGTERM)
        idle.wait(0.1)  # time for that thread to take it: the main thread runs the handler at its next step

    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(os, "replace", replace_then_term)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_files(tmp_path) as tmp:
            for name in ("a.json", "b.json", "c.json"):
                (tmp / name).write_text("new")
    finally:
        signal.signal(signal.SIGTERM, previous)
        idle.set()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == dict.fromkeys(("a.json", "b.json", "c.json"), "new")


def test_a_scratch_folder_is_new_and_gone_afterwards_and_the_named_folder_is_never_touched(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".extracted.tmp{dead.pid}" / "train").mkdir(parents=True)  # a killed fetch's
    (tmp_path / "extracted").mkdir()
    (tmp_path / "extracted" / "keep.txt").write_text("the user's")
    with pytest.raises(RuntimeError), scratch_dir(tmp_path / "extracted") as work:
        assert list(work.iterdir()) == [] and work.parent == tmp_path
        (work / "half.zip").write_bytes(b"x")
        raise RuntimeError("the unpacking failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extracted"]
    assert (tmp_path / "extracted" / "keep.txt").read_text() == "the user's"


def run(args, cwd, env):
    """`imgclf predict|runs ...`: the commands' own functions, in this process (their scripts are tested elsewhere)."""
    from imgclf import cli

    return console({"predict": cli.predict, "runs": cli.runs}[args[0]], args[1:], cwd)


def test_commands_refuse_an_existing_folder_as_their_output(trained_project, tmp_path, project_env):
    image = str(next((trained_project / "data/tiny/images/a").iterdir()))
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "sub" / "results").mkdir()
    (work / "sub" / "results" / "keep.csv").write_text("mine")
    model = str(trained_project / "models/export")
    uri = f"sqlite:///{trained_project}/mlflow.db"
    for args in (
        ["predict", image, "--model", model, "--out", "results"],
        ["predict", image, "--model", model, "--submission", "results"],
        ["predict", image, "--model", model, "--out", ".."],
        ["predict", image, "--model", model, "--request", "results"],
        ["runs", "--uri", uri, "--experiment", "test", "--out", "results"],
        ["runs", "--uri", uri, "--experiment", "test", "--out", ".."],
    ):
        done = run(args, work / "sub", project_env)
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.count("\n") == 1 and "is a folder; give a file name" in done.stderr, done.stderr
    assert (work / "notes.txt").read_text() == "mine" and (work / "sub/results/keep.csv").read_text() == "mine"
    done = run(["predict", image, "--model", model, "--out", "results/predictions.csv"], work / "sub", project_env)
    assert done.returncode == 0 and (work / "sub/results/predictions.csv").read_text().startswith("path,top1,")


def test_atomic_files_replaces_only_what_it_wrote_and_nothing_when_it_fails(tmp_path):
    out = tmp_path / "reports" / "evaluate"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("last run's")
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError), atomic_files(out) as tmp:
        (tmp / "metrics.json").write_text("half")
        raise RuntimeError("a plot failed")
    assert (out / "metrics.json").read_text() == "last run's"
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["evaluate"]  # no temporary folder left
    with atomic_files(out) as tmp:
        (tmp / "metrics.json").write_text("new")
    assert (out / "metrics.json").read_text() == "new" and (out / "notes.txt").read_text() == "the user's"
    refused = pytest.raises(BadInput, match="is a folder where this stage writes a file; move it away; nothing in")
    with refused, atomic_files(tmp_path / "reports") as tmp:
        (tmp / "evaluate").write_text("a file where a folder is")
    assert (out / "notes.txt").read_text() == "the user's"


def test_a_file_that_is_not_a_checkpoint_is_named_with_what_was_wrong_and_what_is_read(tmp_path):
    import pytest

    from imgclf.errors import BadInput
    from imgclf.files import load_tensors

    (tmp_path / "notes.pth").write_text("hello world text\n")  # a pickle's stray key: torch.load says only "101"
    with pytest.raises(BadInput) as err:
        load_tensors(tmp_path / "notes.pth")
    said = str(err.value)
    assert said.startswith(f"{tmp_path / 'notes.pth'}: not a readable checkpoint (KeyError: ")
    assert said.endswith("; a checkpoint is a file torch.save wrote, .pt or .pth)") and "\n" not in said


def test_why_a_folder_cannot_be_made_is_known_before_anything_is_made(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "ro").mkdir(mode=0o500)
    cases = {
        tmp_path / "new" / "deeper": None,
        tmp_path: None,
        " ": "is blank",
        tmp_path / "notes.txt": "is a file, not a folder",
        tmp_path / "notes.txt" / "run": f"cannot be made: {tmp_path / 'notes.txt'} is a file",
        "/proc/x/y": "cannot be written: /proc takes no files",
        tmp_path / "new" / ("x" * 256): "cannot be made: a name in it is longer than 255 bytes",
        tmp_path / "dangling": "is a link that leads nowhere (or to itself)",
        tmp_path / "loop" / "run": f"cannot be made: {tmp_path / 'loop'} is a link that leads nowhere (or to itself)",
    }
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    if os.geteuid() != 0:  # root writes anywhere
        cases[tmp_path / "ro" / "run"] = f"cannot be written: {tmp_path / 'ro'} takes no files"
    assert {str(path): unmakeable_folder(path) for path in cases} == {str(p): why for p, why in cases.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop", "notes.txt", "ro"]  # nothing made


def test_only_empty_folders_are_taken_back_deepest_first(tmp_path):
    made = [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c", tmp_path / "d", tmp_path / "e"]
    for folder in made:
        folder.mkdir()
    (tmp_path / "d" / "kept.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "e", target_is_directory=True)
    remove_empty([*made[:4], tmp_path / "link", tmp_path / "never-made"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e", "link"]
    assert (tmp_path / "d" / "kept.txt").read_text() == "mine"
