"""Who may ask `imgclf serve` for what: server-side paths only under the allowed roots (symlinks resolved, the
same answer outside whether a file exists or not), requests only from the page's own origin and host, bodies
counted against the limit as they arrive."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from fastapi import FastAPI, Request

from imgclf.errors import shown

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_names(host: str) -> tuple[str, ...] | None:
    """The Host names a server bound to `host` answers to: loopback names when every address `host` stands for is a
    loopback address (127.0.0.0/8, ::1, ::ffff:127.x.x.x), however it is spelt (127.1, 2130706433, 0x7f000001, the
    machine's own name where /etc/hosts maps it to 127.0.1.1): a web page rebinding its own name to it is refused.
    None (any) otherwise: a name or address others reach is shared on purpose."""
    import socket

    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):  # what uvicorn cannot bind to either
        return None
    if not found or not all(_loopback(address) for address in found):
        return None
    return (*LOOPBACK, host)


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 address may carry its interface: fe80::1%eth0
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


HEAD_ONLY = "imgclf.head"  # in a request's scope: a HEAD request, whose body nobody reads

DRAIN_FACTOR = 10  # a refused body up to 10 x the limit is read and dropped, so a client sending it hears why


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def inside(path: str | Path, roots: list[Path], *, base: Path | None = None) -> Path:
    """A server-side path, resolved (symlinks followed), if it lies under one of `roots`; a relative path is taken
    from `base` (a list file's folder), else from the working folder. Outside the roots the answer is the same
    PermissionError whether the path exists or not, and so is a path with a `..` part or a `~` (where a link
    leads, or whose home folder exists, would show through how far `..` climbs)."""
    text = str(path)
    resolved = None
    parts = Path(text).parts
    if "\0" not in text and ".." not in parts and not text.startswith("~"):
        try:
            resolved = ((base or Path.cwd()) / text).resolve()
        except (OSError, ValueError, RuntimeError):  # a loop of links, a name too long
            resolved = None
    if resolved is None or not under(resolved, roots):
        allowed = ", ".join(map(str, roots)) or "none (serve --allow-root DIR)"
        raise PermissionError(f"{shown(text)} is outside the allowed roots: {allowed}")
    try:
        exists = resolved.exists()
    except OSError:  # a name too long for the file system, a component that is not a folder
        exists = False
    if not exists:
        raise FileNotFoundError(f"{shown(text)} does not exist")
    return resolved


def under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def open_inside(path: Path, roots: list[Path]) -> BinaryIO:
    """Open a regular file for reading, then check where the open file really is (/proc/self/fd): a folder on its
    way swapped for a link after `inside` looked (a race) is refused here, on the very file that would be read."""

    def inside_roots(fd: int) -> None:
        real = Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else Path(path).resolve()
        if not under(real, roots):
            raise PermissionError(f"{path} is outside the allowed roots")

    from imgclf.files import open_regular

    return open_regular(path, inside_roots)


class UploadTooLarge(Exception):
    """A request body grew past the limit while it was read."""


# on every answer: no other site's page may frame this one (clickjacking the Review's fixes), and a browser takes
# each answer as the type it is sent as
HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]


def _answering(send, *, head: bool):
    """`send` with HEADERS added to the answer's start; for a HEAD request, the GET answer's headers without its
    body."""

    async def sending(message):
        if message["type"] == "http.response.start":
            given = {name.lower() for name, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []), *(h for h in HEADERS if h[0] not in given)]}
        elif head and message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return sending


class Guard:
    """ASGI middleware in front of every route: the Host must be this server's (when `allowed_hosts` says which),
    a request that is not a GET must come from this server's own page (no foreign Origin, not cross-site), and a
    body over `max_bytes` is refused with 413, by its Content-Length when it has one, else counted as it arrives
    (chunked): nothing past the limit is read into the app. Every answer carries HEADERS, and a HEAD request is
    answered as its GET is, headers only."""

    def __init__(self, app: FastAPI, *, max_bytes: int, allowed_hosts: tuple[str, ...] | None, answer):
        self.app, self.max_bytes, self.allowed_hosts, self.answer = app, max_bytes, allowed_hosts, answer

    def __getattr__(self, name: str):  # the wrapped app's attributes (routes, state) for tests and tools
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _answering(send, head=scope["method"] == "HEAD")
        if scope["method"] == "HEAD":  # answered as a GET without its body; HEAD_ONLY says so to a costly route
            scope = {**scope, "method": "GET", HEAD_ONLY: True}
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            response = self.answer(request, *refusal)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await _drain(receive)  # read and dropped (never kept): the client then hears the answer
            else:
                response.headers["connection"] = "close"  # not worth reading: the connection ends
            return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # the app's handler for it answers 413
                raise UploadTooLarge
            return message

        await self.app(scope, counted, send)

    def refusal(self, request: Request) -> tuple[int, str] | None:
        host = request.headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return 403, f"Host {host[:100]!r} is not this server's name; use http://127.0.0.1"
        # a read of the API costs decoding too (a Review listing: a hundred thumbnails): another site's <img> is refused
        guarded = request.method not in ("GET", "HEAD") or request.url.path.startswith("/api/")
        if guarded and _from_elsewhere(request.headers, host):
            return 403, "cross-site request refused: only this server's own page may send it"
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            size = f"{int(declared) / 1e6:.1f} MB" if declared.isdigit() else "an unreadable size"
            return 413, f"upload of {size} is over the limit of {self.max_bytes / 1e6:g} MB"
        return None


def _from_elsewhere(headers, host: str) -> bool:
    """A request another page sent: the browser says so (Sec-Fetch-Site other than same-origin, or none: typed or
    bookmarked), or its Origin, else its Referer, is not this server (another port of the same host included)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    sender = headers.get("origin") or headers.get("referer")
    return sender is not None and urlsplit(sender).netloc != host


def _hostname(host: str) -> str:
    """`name:port`, `[::1]:port` -> the name alone."""
    return urlsplit(f"//{host}").hostname or ""


async def json_body(request: Request, answer, example: str, what: str, max_bytes: int):
    """A small JSON object sent to a route that changes server state: the dict ({} for anything but an object), or
    the answer refusing it (415 not JSON, 413 past `max_bytes`, counted as it arrives)."""
    import json

    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return answer(request, 415, f"send {example} as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return answer(request, 413, f"{what} is a small JSON object (at most {max_bytes} bytes)")
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        sent = None
    return sent if isinstance(sent, dict) else {}
