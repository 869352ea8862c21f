"""The outbox: records wait on disk while the server is away, go out in order, and survive the process."""

import json
import threading
import time

import pytest

from imgclf.tracking import outbox
from imgclf.tracking.outbox import Outbox


class Server:
    """A fake tracking server that can be down; records what it took."""

    def __init__(self, up=True):
        self.up, self.taken, self.files = up, [], {}
        self.lock = threading.Lock()

    def send(self, record, directory):
        if not self.up:
            raise ConnectionError("connection refused")
        if record["op"] == "artifact":
            self.files[record["artifact_path"]] = (directory / record["file"]).read_text()
        with self.lock:
            self.taken.append(record)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(outbox, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(outbox, "MAX_DELAY", 0.05)


def batch(i):
    return {"op": "batch", "metrics": [["m", float(i), 0, i]]}


def never(exc):
    return False


def test_records_wait_while_the_server_is_away_then_arrive_in_order(tmp_path, caplog):
    server = Server(up=False)
    box = Outbox(tmp_path / "box", server.send, permanent=never, meta={"run_id": "r"})
    start = time.monotonic()
    for i in range(50):
        box.put(batch(i))
    assert time.monotonic() - start < 1.0  # put never waits for the server
    time.sleep(0.2)
    assert server.taken == [] and box.pending == 50
    assert len((tmp_path / "box" / "journal.jsonl").read_text().splitlines()) == 50  # on disk already
    server.up = True
    assert box.close(timeout=10)
    assert server.taken == [batch(i) for i in range(50)]
    assert not (tmp_path / "box").exists()  # delivered: nothing left behind
    assert "tracking server unreachable" in caplog.text and "tracking server back" in caplog.text


def test_a_closing_owner_tries_every_second_whatever_the_backoff_reached(tmp_path, monkeypatch):
    # while training runs the tries back off (here to a minute); once the owner only waits for its records, the
    # server's return ends the wait within a second, not a backoff later
    monkeypatch.setattr(outbox, "FIRST_DELAY", 60.0)
    monkeypatch.setattr(outbox, "MAX_DELAY", 60.0)
    server = Server(up=False)
    box = Outbox(tmp_path / "box", server.send, permanent=never, meta={"run_id": "r"})
    box.put(batch(0))
    while box.outage_since is None:  # the first try failed: the next is a minute away
        time.sleep(0.01)
    threading.Timer(1.5, setattr, (server, "up", True)).start()
    assert box.close(timeout=8) and server.taken == [batch(0)]


def test_what_close_gives_up_on_is_sent_later_from_the_journal_exactly_once(tmp_path):
    server = Server(up=True)
    box = Outbox(tmp_path / "box", server.send, permanent=never, meta={"run_id": "r"})
    for i in range(3):
        box.put(batch(i))
    while box.pending:
        time.sleep(0.01)
    server.up = False
    for i in range(3, 8):
        box.put(batch(i))
    started = time.monotonic()
    assert not box.close(timeout=0.5)
    assert time.monotonic() - started < 3
    assert outbox.leftover(tmp_path) == [tmp_path / "box"] and json.loads((tmp_path / "box/meta.json").read_text())
    # a new process (imgclf sync): reads the journal, skips what was sent
    server.up = True
    again = Outbox(tmp_path / "box", server.send, permanent=never)
    assert again.close(timeout=10)
    assert server.taken == [batch(i) for i in range(8)]


def test_a_record_cut_short_by_a_killed_writer_is_dropped_and_the_rest_are_sent(tmp_path, caplog):
    server = Server(up=False)
    box = Outbox(tmp_path / "box", server.send, permanent=never, meta={"run_id": "r"})
    for i in range(3):
        box.put(batch(i))
    assert not box.close(timeout=0.1)
    journal = tmp_path / "box" / "journal.jsonl"
    with journal.open("a") as f:  # a fourth append, killed halfway
        f.write(json.dumps(batch(3))[:20])
    server.up = True
    again = Outbox(tmp_path / "box", server.send, permanent=never)  # imgclf sync
    again.put(batch(4))  # on a line of its own
    assert again.close(timeout=10)
    assert server.taken == [batch(0), batch(1), batch(2), batch(4)]
    assert "cut short by a killed process" in caplog.text


def test_a_refused_record_is_dropped_with_a_warning_and_the_rest_go_on(tmp_path, caplog):
    taken = []

    def send(record, directory):
        if record.get("bad"):
            raise ValueError("INVALID_PARAMETER_VALUE: changed param")
        taken.append(record)

    box = Outbox(tmp_path / "box", send, permanent=lambda exc: isinstance(exc, ValueError))
    box.put(batch(0))
    box.put({"op": "batch", "bad": True})
    box.put(batch(1))
    assert box.close(timeout=10)
    assert taken == [batch(0), batch(1)]
    assert "dropped a batch record the server refused" in caplog.text


def test_a_file_is_uploaded_as_it_was_when_logged(tmp_path):
    server = Server(up=False)
    box = Outbox(tmp_path / "box", server.send, permanent=never)
    report = tmp_path / "report.txt"
    report.write_text("epoch 1")
    box.put_file(report, "train")
    tmp = tmp_path / "report.txt.tmp"  # how our writers replace a file: a new one, renamed over the old
    tmp.write_text("epoch 2")
    tmp.replace(report)
    box.put_file(report, "later")
    report.unlink()
    server.up = True
    assert box.close(timeout=10)
    assert server.files == {"train": "epoch 1", "later": "epoch 2"}
