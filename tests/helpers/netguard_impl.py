"""A socket guard: any connection to a non-loopback address is refused and recorded.

Libraries such as codecarbon and wandb swallow connection errors, so refusing is not enough: the harness
also fails the test afterwards if anything was recorded.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_ORIGINAL_CONNECT = socket.socket.connect
_ORIGINAL_CONNECT_EX = socket.socket.connect_ex
_ORIGINAL_CREATE_CONNECTION = socket.create_connection
_ORIGINAL_GETADDRINFO = socket.getaddrinfo
VIOLATIONS: list[str] = []
_LOG_PATH: str | None = None


def _is_loopback(host: Any) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    VIOLATIONS.append(what)
    if _LOG_PATH:
        with open(_LOG_PATH, "a") as fh:
            fh.write(what + "\n")


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _record(f"connect to {address!r}")
        raise ConnectionRefusedError(
            f"lightning_reuse test network guard: non-loopback connect to {address!r}"
        )


def _connect(self: socket.socket, address: Any) -> Any:
    _check(self, address)
    return _ORIGINAL_CONNECT(self, address)


def _connect_ex(self: socket.socket, address: Any) -> Any:
    _check(self, address)
    return _ORIGINAL_CONNECT_EX(self, address)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    # DNS lookups of external names are network traffic too (and hang on closed networks).
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and not _is_loopback(host):
        try:
            ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            if host not in (socket.gethostname(),):
                _record(f"DNS lookup of {host!r}")
                raise socket.gaierror(f"lightning_reuse test network guard: DNS lookup of {host!r}") from None
    return _ORIGINAL_GETADDRINFO(host, *args, **kwargs)


def install(log_path: str | None = None) -> None:
    global _LOG_PATH
    _LOG_PATH = log_path
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


def uninstall() -> None:
    socket.socket.connect = _ORIGINAL_CONNECT  # type: ignore[method-assign]
    socket.socket.connect_ex = _ORIGINAL_CONNECT_EX  # type: ignore[method-assign]
    socket.getaddrinfo = _ORIGINAL_GETADDRINFO  # type: ignore[assignment]
