"""The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Under a unit with `Type=notify`, systemd sets `$NOTIFY_SOCKET` to an AF_UNIX datagram socket
(a path, or an abstract name spelled with a leading `@`). Each message is newline-separated
`KEY=VALUE` lines: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=`.
Without `$NOTIFY_SOCKET` every call is a silent no-op, so the daemon never needs to know
whether systemd runs it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def _address(raw: str) -> str | bytes | None:
    """The socket address named by $NOTIFY_SOCKET, or None when it is unusable."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock (vsock:CID:PORT) and relative paths are not supported


def format_message(fields: Mapping[str, object]) -> bytes:
    """`KEY=VALUE` lines for a notify datagram; values lose their newlines (one line each)."""
    lines = []
    for key, value in fields.items():
        if not key or not key.replace("_", "").isalnum() or not key.isupper():
            raise ValueError(f"invalid sd_notify field name: {key!r}")
        text = " ".join(str(value).splitlines())
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


class Notifier:
    """Sends notify messages to the socket named by `$NOTIFY_SOCKET` (read once, at creation).

    Thread-safe and never blocking. A send that fails (socket gone, queue full) is logged once
    and then ignored: notifications are a courtesy to the service manager, never a reason to
    stop (or stall) syncing.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed = False
        self._dropped = False

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (we run under systemd with Type=notify)."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send one message (`notify(READY=1, STATUS="watching")`); True if it was sent."""
        if self._address is None or not fields:
            return False
        data = format_message(fields)
        with self._lock:
            try:
                if self._sock is None:
                    # never block the loop on a slow or full receiver: drop the message instead
                    self._sock = socket.socket(
                        socket.AF_UNIX,
                        socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                    )
                self._sock.sendto(data, self._address)
            except BlockingIOError:
                if not self._dropped:
                    log.warning("notify_dropped", reason="the notify socket's queue is full")
                self._dropped = True
                return False
            except OSError as exc:
                if not self._failed:
                    log.warning("notify_failed", error=exc.strerror or str(exc))
                self._failed = True
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def notify(environ: Mapping[str, str] = os.environ, **fields: object) -> bool:
    """Send one message to `$NOTIFY_SOCKET` with a fresh socket; silent no-op without it."""
    notifier = Notifier(environ)
    try:
        return notifier.notify(**fields)
    finally:
        notifier.close()


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds between watchdog deadlines systemd expects (`WatchdogSec=`), or None.

    From `$WATCHDOG_USEC`; when `$WATCHDOG_PID` is set it must name this process (a child that
    inherited the environment must not ping on its parent's behalf). Ping at half this interval.
    """
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
