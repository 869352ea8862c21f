"""`imgclf serve` in a real browser: headless Chromium from Debian's packages, driven by Selenium through Debian's
chromedriver. The page's top-1 equals `imgclf predict`'s for the same file; Classify Many of three files; bad files
get a message and the server keeps serving; each view's screenshot is not blank; stopped, it leaves no temporary
folder. `make test` installs Chromium and sets IMGCLF_REQUIRE_SERVERS=1, so in CI a missing browser fails instead of
skipping."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.tracking.server import free_port

from ..conftest import BIN, console, trained_tiny_project

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("IMGCLF_SCREENSHOTS")  # a folder to keep the screenshots in (README's pictures)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project trained, evaluated and exported once."""
    return trained_tiny_project(tmp_path_factory.mktemp("serve"))


REVIEWED = ["1", "a/000.png", "train", "a", "b", "0.02", "0.95"]  # a label_issues.csv row: a/000.png looks like b


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    (project / "relabel").mkdir(exist_ok=True)
    issues = project / "reports/label_issues/label_issues.csv"
    issues.parent.mkdir(parents=True, exist_ok=True)
    issues.write_text(
        "rank,path,split,given_label,suggested_label,self_confidence,suggested_prob\n" + ",".join(REVIEWED)
    )
    port = free_port()
    cmd = [str(BIN / "imgclf"), "serve", "--model", "models/export", "--port", str(port)]
    cmd += ["--uri", f"sqlite:///{project}/mlflow.db", "--experiment", "test", "--allow-root", "data"]
    cmd += ["--allow-root", "relabel", "--review", "tiny"]
    cmd += ["--max-upload-mb", "5", "--max-connections", "16", "--header-timeout", "3"]
    tmp = tmp_path_factory.mktemp("serve-tmp")  # its temporary folder: downloaded models, run pictures, uploads
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/api/model", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "serve did not start"
            time.sleep(0.3)
    yield url
    used = list(tmp.glob("imgclf-serve-*"))
    assert len(used) == 1 and any(used[0].iterdir())  # one folder, holding the model card's pictures
    proc.terminate()  # SIGTERM, as a service manager stops it: it ends as SIGTERM ends a process, its folder gone
    assert proc.wait(timeout=30) == -signal.SIGTERM and not list(tmp.glob("imgclf-serve-*")), proc.stdout.read()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        message = "Debian's chromium and chromium-driver are not installed (make test installs them)"
        if os.environ.get("IMGCLF_REQUIRE_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def cli_top1(project, path):
    """`imgclf predict PATH --top-k 1`'s top class: the command's function in this process (its script is tested in
    tests/deploy/test_predict.py)."""
    from imgclf.cli import predict

    out = console(predict, [str(path), "--top-k", "1"], project)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[1].split()[1]  # "  1. <class>  <prob>"


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def screenshot(driver, name, tmp_path):
    out = Path(SCREENSHOTS or tmp_path) / f"serve-{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    red, green, blue = pixels.astype(np.uint32).T  # one number per colour: a tenth of unique(axis=0)'s CPU
    assert pixels.std() > 10 and len(np.unique(red << 16 | green << 8 | blue)) > 50, f"{out} looks blank"


def test_classify_one_many_and_bad_files_in_a_browser(project, server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    images = sorted((project / "data/tiny/images").rglob("*.png"))
    picks = [images[0], images[25], images[50]]  # one of each class
    browser.get(server)
    # the first page: no broken image, no empty "Top-1:" before anything is chosen
    assert not browser.find_element(By.ID, "one-image").is_displayed()
    assert not browser.find_element(By.ID, "one-result").is_displayed()
    browser.find_element(By.ID, "one-file").send_keys(str(picks[1]))
    browser.find_element(By.ID, "one-submit").click()
    top1 = wait_for(browser, lambda d: d.find_element(By.ID, "one-top1").text)
    assert top1 == cli_top1(project, picks[1])  # the page and `imgclf predict` agree
    assert len(browser.find_elements(By.CSS_SELECTOR, "#one-top tr")) == 3  # the top classes (3 here) with bars
    assert browser.find_element(By.ID, "one-image").get_attribute("src").startswith("data:image/jpeg")
    assert browser.find_element(By.ID, "one-cam").get_attribute("src").startswith("data:image/png")  # Grad-CAM
    assert browser.find_element(By.ID, "one-latency").text.endswith("ms)")
    screenshot(browser, "one", tmp_path)

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=many]").click()
    browser.find_element(By.ID, "many-files").send_keys("\n".join(map(str, picks)))
    browser.find_element(By.ID, "many-submit").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#many-table tr.result")) == 3)
    rows = browser.find_elements(By.CSS_SELECTOR, "#many-table tr.result")
    page = {r.find_element(By.CLASS_NAME, "name").text: r.find_element(By.CLASS_NAME, "top1").text for r in rows}
    assert page == {p.name: cli_top1(project, p) for p in picks}
    assert browser.find_element(By.ID, "many-csv").get_attribute("href").startswith("blob:")
    # a cell a spreadsheet would run (=, +, -, @, or one behind a tab or CR) is kept as text in the download
    cells = browser.execute_script("return ['=1+1', '\\t=1+1', '\\r@SUM(1)', 'a=1'].map(csvText)")
    assert cells == ["'=1+1", "'\t=1+1", "'\r@SUM(1)", "a=1"]
    screenshot(browser, "many", tmp_path)

    # bad files: one clear message each, and the server goes on serving
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("not an image")
    (bad / "truncated.png").write_bytes(picks[0].read_bytes()[:60])
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=one]").click()
    for name in ("empty.png", "notes.png", "truncated.png"):
        browser.find_element(By.ID, "one-file").clear()
        browser.find_element(By.ID, "one-file").send_keys(str(bad / name))
        browser.find_element(By.ID, "one-submit").click()
        message = wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
        assert message.startswith(f"{name}: not a readable image"), message
    browser.find_element(By.ID, "one-file").clear()
    browser.find_element(By.ID, "one-path").send_keys("/etc/passwd")
    browser.find_element(By.ID, "one-submit").click()
    message = wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
    assert message.startswith("/etc/passwd is outside the allowed roots"), message
    screenshot(browser, "error", tmp_path)

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=card]").click()
    card = json.loads(urllib.request.urlopen(server + "/api/model").read())
    assert {"curves", "confusion"} <= set(card["pictures"])  # the run's curves and confusion matrix
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#card-pictures img")) == len(card["pictures"]))
    assert card["run_id"] == json.loads((project / "models/run.json").read_text())["run_id"]
    assert card["classes"] == ["a", "b", "c"] and set(card["metrics"]) == {"test/acc", "test/macro_f1"}
    assert browser.find_element(By.ID, "card-test-acc").text == f"{card['metrics']['test/acc']:.4f}"
    screenshot(browser, "model", tmp_path)

    # Runs: DIGITS' training graph, the latest run's loss and accuracy per epoch, read from MLflow
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=runs]").click()
    curve = "#chart-acc polyline[data-key='val/acc']"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, curve))
    assert len(browser.find_element(By.CSS_SELECTOR, curve).get_attribute("points").split()) == 3  # 3 epochs
    row = browser.find_element(By.CSS_SELECTOR, "#runs-table tr.picked")
    assert row.get_attribute("data-run") == card["run_id"]
    assert row.find_element(By.CLASS_NAME, "status").text == "FINISHED"
    screenshot(browser, "runs", tmp_path)


def test_a_suggested_label_is_accepted_in_the_review_view(project, server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    tab = wait_for(
        browser, lambda d: d.find_element(By.ID, "review-tab").is_displayed() and d.find_element(By.ID, "review-tab")
    )
    tab.click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#review-table tr.issue"))
    row = browser.find_element(By.CSS_SELECTOR, "#review-table tr.issue")
    assert row.get_attribute("data-path") == "a/000.png" and row.find_element(By.CLASS_NAME, "suggested").text == "b"
    assert row.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/jpeg")
    screenshot(browser, "review", tmp_path)
    row.find_element(By.CLASS_NAME, "accept").click()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#review-table tr.issue .fixed").text)
    assert (project / "relabel/tiny.csv").read_text() == "path,label\na/000.png,b\n"  # what split applies next


def post(url, fields, files):
    """A multipart POST with urllib; returns (status, JSON body)."""
    boundary = "imgclf-test-boundary"
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for filename, data in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_uploads_are_limited_and_huge_images_are_refused_without_taking_the_server_down(project, server):
    import struct
    import zlib

    status, body = post(server + "/api/classify", {}, [("big.png", b"\0" * 6_000_000)])
    assert status == 413 and body["error"] == "upload of 6.0 MB is over the limit of 5 MB"

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    status, body = post(server + "/api/classify", {}, [("huge.png", huge + chunk(b"IEND", b""))])
    assert status == 200 and body["results"][0]["error"].endswith("over the limit of 89,478,485 pixels")
    status, body = post(server + "/api/classify", {"path": "data/tiny/images/b"}, [])  # a folder under the root
    assert status == 200 and len(body["results"]) == 20
    card = json.loads(urllib.request.urlopen(server + "/api/model").read())  # the server is still up
    assert card["classes"] == ["a", "b", "c"]

    # the model picker: the registered version and the run whose export is on disk; switching to either works
    picker = json.loads(urllib.request.urlopen(server + "/api/models").read())
    assert [m["ref"] for m in picker["registered"]] == ["models:/imgclf-tiny/1"]
    assert [r["ref"] for r in picker["runs"]] == [card["run_id"]]
    for ref in ("models:/imgclf-tiny/1", card["run_id"]):
        request = urllib.request.Request(
            server + "/api/model", json.dumps({"model": ref}).encode(), {"Content-Type": "application/json"}
        )
        switched = json.loads(urllib.request.urlopen(request).read())
        assert switched["model"] == ref and switched["run_id"] == card["run_id"]
    status, body = post(server + "/api/classify", {"path": "data/tiny/images/a/000.png"}, [])
    assert status == 200 and body["model"] == card["run_id"] and body["results"][0]["top"]


def test_connections_that_never_finish_their_headers_are_closed_and_the_page_answers_again(server):
    """A few connections that send part of a request and then nothing held every slot of --max-connections for as
    long as they stayed open: every other client got 503. Each has --header-timeout seconds for its headers."""
    import socket

    port = int(server.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # past --max-connections 16
    for sock in held:
        sock.sendall(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    answered_within(server, 30)  # once the held connections are closed (3 s), 503 before
    for sock in held:
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed by the server, nothing sent
        sock.close()


def answered_within(server, seconds):
    """Polls the page until it answers 200; only 503 (every connection slot taken) is allowed before."""
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(server + "/api/model", timeout=5) as answer:
                assert answer.status == 200
                return
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and time.time() < deadline, exc
            time.sleep(0.5)


FORM_HEAD = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'  # a file part begins


def test_connections_that_trickle_their_bodies_are_closed_and_the_page_answers_again(server):
    """Connections that send whole headers, then a body a byte a second, held every slot of --max-connections for
    as long as they went on: every other client got 503. A body must average --min-body-rate (10 KB/s) once its
    first --header-timeout (3 s) has passed; slower, it is answered 408 and closed."""
    import select
    import socket
    import threading

    port = int(server.rsplit(":", 1)[1])
    head = b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
    head += b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + FORM_HEAD
    held = []
    for _ in range(20):  # past --max-connections 16; each request in before the next connection is open
        held.append(socket.create_connection(("127.0.0.1", port)))
        held[-1].sendall(head)
        time.sleep(0.1)
    closed, stop = set(), threading.Event()

    def trickle():  # a byte a second on each until the server answers or closes it: for a minute at most
        for _ in range(60):
            for sock in set(held) - closed:
                try:
                    if select.select([sock], [], [], 0)[0]:
                        closed.add(sock)
                    else:
                        sock.sendall(b"x")
                except OSError:  # closed between the two
                    closed.add(sock)
            if stop.wait(1):
                return

    def answer(sock):
        try:
            return sock.recv(1000)
        except ConnectionResetError:  # the byte sent as the server closed it: its answer dropped
            return b""

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        answered_within(server, 20)
        deadline = time.time() + 15
        while closed != set(held) and time.time() < deadline:  # the later ones, opened up to 2 s later
            time.sleep(0.2)
        assert closed == set(held) and sender.is_alive()  # closed by the server, not by the client's stopping
        answers = [answer(sock) for sock in held]
    finally:
        stop.set()
        sender.join()
        for sock in held:
            sock.close()
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    assert len(timed_out) >= 10 and all(a.startswith(b"HTTP/1.1 503 ") or not a for a in answers if a not in timed_out)
    said = b'{"error":"the request body came slower than 10 KB/s after its first 3 s; send it at least that fast"}'
    assert timed_out[0].endswith(said)


def test_uploads_at_full_speed_and_at_a_slow_links_pace_are_classified(server):
    """A body over the first --header-timeout seconds is not refused while it averages --min-body-rate: 280 KB sent
    at 80 KB/s (3.5 s, over the 3 s) is classified, as is 3 MB at full speed."""
    import http.client
    import io
    import socket

    def png(side):
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), np.uint8)).save(out, "PNG")
        return out.getvalue()

    big = png(1000)
    assert len(big) > 2_900_000
    status, body = post(server + "/api/classify", {}, [("big.png", big)])
    assert status == 200 and body["results"][0]["top"], body
    form = FORM_HEAD + png(300) + b"\r\n--b--\r\n"
    assert len(form) > 270_000
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(form)}\r\n".encode())
        sock.sendall(b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        started = time.time()
        for start in range(0, len(form), 20_000):  # 20 KB every quarter of a second
            sock.sendall(form[start : start + 20_000])
            time.sleep(0.25)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert time.time() - started > 3.3 and answer.status == 200, answer.read()
        assert json.loads(answer.read())["results"][0]["top"]
