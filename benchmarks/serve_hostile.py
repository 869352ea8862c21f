"""`imgclf serve`'s memory under hostile requests: its peak RSS while `--clients` requests arrive at once, against the
bound its settings give.

Starts `imgclf serve` on the exported model (default: models/export from `make pipeline`) with
`--max-concurrent` slots, then sends, all at once, a quarter each of: a PNG just under the pixel limit (the largest
image it must decode: 9,400 x 9,400), a 100-byte PNG whose header claims 13,000 x 13,000 (over the limit), a
30 MB body with its Content-Length, and a 60 MB chunked body (no Content-Length), against the default 20 MB limit.
Samples the server's RSS every 10 ms and prints the baseline, the peak, and the bound:
baseline + max_concurrent x 8 bytes x MAX_PIXELS (an image's pixels in its own mode plus their RGB copy, 4 bytes
a pixel each at most, while one slot decodes it).

    python benchmarks/serve_hostile.py [--model models/export] [--clients 40] [--max-concurrent 2]
    python benchmarks/serve_hostile.py --src /tmp/old/src   # another checkout's imgclf, side by side
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from PIL import Image

from imgclf.data.images import MAX_PIXELS
from imgclf.tracking.server import free_port
from serve_load import run_together, start_serve  # benchmarks/, beside this script

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "imgclf-hostile"


def multipart(name: str, data: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def largest_png() -> bytes:
    """A real grayscale PNG just under the pixel limit (a few hundred KB of zeros that decode to 88 MB)."""
    side = int(MAX_PIXELS**0.5) - 50
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def send(port: int, kind: str, payloads: dict, answers: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    try:
        if kind == "chunked":  # a 60 MB file part, sent in 1 MB chunks without a Content-Length
            head, tail = payloads["oversized"][:200].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", b"\r\n--x--\r\n"
            blocks = itertools.chain([head], (b"\0" * (1 << 20) for _ in range(60)), [tail])
            conn.request("POST", "/api/classify", body=blocks, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", "/api/classify", body=payloads[kind], headers=headers)
        response = conn.getresponse()
        answers.append((kind, response.status, response.read()[:200]))
    except OSError as exc:  # the server may close a refused upload before reading all of it
        answers.append((kind, "closed", str(exc)))
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--src", type=Path, help="run `imgclf serve` from this src/ folder (an older checkout)")
    args = parser.parse_args()
    payloads = {
        "largest": multipart("largest.png", largest_png()),
        "over_limit": multipart("claims.png", png_claiming(13_000, 13_000)),
        "oversized": multipart("big.bin", b"\0" * 30_000_000),
    }
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())} if args.src else None
    serve = [sys.executable, "-c", "import sys; from imgclf.cli import main; sys.argv[0] = 'imgclf'; main()", "serve"]
    knows = "--max-concurrent" in subprocess.run([*serve, "--help"], capture_output=True, text=True, env=env).stdout
    with tempfile.TemporaryDirectory() as root:
        cmd = [*serve, "--model", str(args.model.resolve()), "--port", str(port), "--allow-root", root]
        cmd += ["--max-concurrent", str(args.max_concurrent)] if knows else []
        server = start_serve(cmd, port, env)
        ok: list = []
        send(port, "over_limit", payloads, ok)  # one request through every code path first: the baseline
        baseline, samples, done = rss_mb(server.pid), [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(rss_mb(server.pid))
                time.sleep(0.01)

        kinds = ["largest", "over_limit", "oversized", "chunked"]
        answers: list = []
        threads = [
            threading.Thread(target=send, args=(port, kinds[i % 4], payloads, answers)) for i in range(args.clients)
        ]
        sampler = threading.Thread(target=sample)
        sampler.start()
        elapsed = run_together(threads)
        done.set()
        sampler.join()
        alive = server.poll() is None
        server.terminate()
        server.wait()
    bound = baseline + args.max_concurrent * 8 * MAX_PIXELS / 2**20 if knows else None
    statuses: dict = {}
    for kind, status, _ in answers:
        statuses.setdefault(kind, {}).setdefault(str(status), 0)
        statuses[kind][str(status)] += 1
    print(
        json.dumps(
            {
                "serve": str(args.src or "this checkout"),
                "clients": args.clients,
                "max_concurrent": args.max_concurrent if knows else "none (every request decodes at once)",
                "seconds": round(elapsed, 1),
                "answers": statuses,
                "server_alive": alive,
                "baseline_rss_mb": round(baseline),
                "peak_rss_mb": round(max(samples)),
                "bound_mb": round(bound) if bound else None,
                "peak_within_bound": max(samples) <= bound if bound else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
