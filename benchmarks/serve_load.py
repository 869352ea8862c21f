"""`imgclf serve` under load: Classify One requests from concurrent clients, beside `imgclf predict`'s per image.

Starts `imgclf serve` on the exported model (default: models/export from `make pipeline`), then `--clients` threads
each post one test image at a time for `--seconds`; prints requests/s, p50/p99 latency and errors, and the
Classifier's per-image latency in this process (what `imgclf predict` spends per image, start-up excluded).

    python benchmarks/serve_load.py [--model models/export] [--clients 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from imgclf.deploy.predict import Classifier
from imgclf.tracking.server import free_port

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "imgclf-load"


def body(image: Path) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{image.name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + image.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


def client(url: str, payload: bytes, until: float, latencies: list, errors: list) -> None:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, payload, headers), timeout=60) as response:
                result = json.loads(response.read())["results"][0]
            if result.get("error"):
                errors.append(result["error"])
                continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(str(exc))
            continue
        latencies.append(time.perf_counter() - started)


def start_serve(cmd: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
    """`imgclf serve` started from `cmd`, returned once it answers on `port`."""
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=2).read()
            return server
        except OSError:
            assert server.poll() is None, "imgclf serve exited"
            time.sleep(0.3)


def run_together(threads: list[threading.Thread]) -> float:
    """Start every thread, wait for all; the seconds it took."""
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    parser.add_argument("--image", type=Path, help="default: the first test image of the split")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    image = args.image or next(iter(sorted((ROOT / "data" / "digits" / "images").rglob("*.png"))))
    classifier = Classifier(args.model)
    classifier.classify([image])  # warm up
    times = []
    for _ in range(50):
        started = time.perf_counter()
        classifier.classify([image])
        times.append(time.perf_counter() - started)
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "imgclf"), "serve", "--model", str(args.model), "--port", str(port)]
    server = start_serve(cmd, port)
    url = f"http://127.0.0.1:{port}/api/classify"
    payload = body(image)
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=client, args=(url, payload, until, latencies, errors)) for _ in range(args.clients)
    ]
    elapsed = run_together(threads)
    server.terminate()
    server.wait()
    ms = np.array(latencies) * 1000
    print(
        json.dumps(
            {
                "clients": args.clients,
                "seconds": round(elapsed, 1),
                "requests": len(latencies),
                "errors": len(errors),
                "requests_per_s": round(len(latencies) / elapsed, 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "predict_per_image_ms_p50": round(float(np.percentile(np.array(times) * 1000, 50)), 2),
                "first_errors": errors[:3],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
