"""The address and port a server is about to listen on, checked before it starts anything (a database, a model)."""

from __future__ import annotations

import errno
import socket


def cannot_listen(host: str, port: int, port_flag: str = "--port") -> str | None:
    """Why a server could not listen on host:port now, as one line naming the option to change (a port in use: the
    port; an address not of this machine, or none: the host), or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        change = f"another {port_flag}" if exc.errno == errno.EADDRINUSE else "--host an address of this machine"
        return f"cannot listen on {host}:{port} ({exc.strerror or exc}); give {change}"
    return None
