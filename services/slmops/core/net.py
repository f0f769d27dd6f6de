"""Listening sockets for the HTTP servers the platform runs (predictors, the traffic router)."""

from __future__ import annotations

import socket

# Request bodies past this get 413: a predictor's default, and the cap of a router in front of one.
MAX_BODY_BYTES = 1 << 20


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it, a response written in two parts
    # waits on the client's delayed ACK (about 40 ms on every keep-alive request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
