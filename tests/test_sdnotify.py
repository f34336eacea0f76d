"""sd_notify over a real AF_UNIX datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sdnotify import Notifier, format_message, notify, watchdog_interval


@pytest.fixture(name="listener")
def _listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_message_reaches_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    """notify() writes KEY=VALUE lines, one datagram per call, to $NOTIFY_SOCKET."""
    sock, path = listener
    assert notify({"NOTIFY_SOCKET": path}, READY=1, STATUS="catching up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=catching up\n"


def test_abstract_namespace_socket() -> None:
    """A $NOTIFY_SOCKET starting with @ names a socket in the Linux abstract namespace."""
    name = f"syncd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        assert notifier.notify(WATCHDOG=1)
        assert notifier.notify(STOPPING=1)
        assert sock.recv(4096) == b"WATCHDOG=1\n"
        assert sock.recv(4096) == b"STOPPING=1\n"
        notifier.close()
    finally:
        sock.close()


def test_silent_without_notify_socket() -> None:
    """Outside systemd (no $NOTIFY_SOCKET) nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify(READY=1) is False
    assert notify({}, READY=1) is False


def test_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    """A $NOTIFY_SOCKET that does not exist makes sends return False instead of raising."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.notify(READY=1) is False
    assert notifier.notify(STATUS="again") is False
    notifier.close()


def test_full_receiver_never_blocks(listener: tuple[socket.socket, str]) -> None:
    """When nobody reads the socket and its queue is full, sends are dropped, not blocking."""
    _sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    results = [notifier.notify(WATCHDOG=1) for _ in range(2000)]
    assert results[0] is True
    assert results[-1] is False
    notifier.close()


def test_values_are_kept_on_one_line() -> None:
    """A value with newlines cannot inject a second field into the message."""
    assert format_message({"STATUS": "error:\nREADY=1"}) == b"STATUS=error: READY=1\n"
    with pytest.raises(ValueError):
        format_message({"bad key": 1})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "nonsense"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """The watchdog interval comes from $WATCHDOG_USEC, only for the process $WATCHDOG_PID names."""
    assert watchdog_interval(environ) == expected
