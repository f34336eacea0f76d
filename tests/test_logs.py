"""Logging setup: JSON off a terminal, console on one, one chain for stdlib, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from syncd import logs
from syncd.logs import configure_logging, register_secret, scrub

SECRET = "pat-0123456789abcdef0123456789abcdef"
HEADER = "Authorization: Key hdr-4444555566667777"


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo configure_logging: root handlers and levels, urllib3's level, structlog defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    urllib3_level = logging.getLogger("urllib3").level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(urllib3_level)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_timestamp_level_event_logger() -> None:
    """Off a terminal each event is one JSON object with ISO UTC timestamp, level, event, logger."""
    out = io.StringIO()
    configure_logging("info", "auto", out, environ={})
    structlog.get_logger("syncd.engine").info("pass_finished", added=3, seconds=1.5)
    [line] = json_lines(out)
    assert line["event"] == "pass_finished"
    assert line["level"] == "info"
    assert line["logger"] == "syncd.engine"
    assert (line["added"], line["seconds"]) == (3, 1.5)
    stamp = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))
    assert str(line["timestamp"]).endswith("Z")
    assert stamp.utcoffset() == timedelta(0)


def test_json_renders_paths_and_times_readably() -> None:
    """Paths appear as plain text and datetimes in ISO form, not as Python reprs."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    structlog.get_logger("syncd").info("ledger_opened", path=Path("/var/lib/syncd/p.db"), at=when)
    [line] = json_lines(out)
    assert (line["path"], line["at"]) == ("/var/lib/syncd/p.db", "2024-05-01T12:00:00+00:00")


def test_stdlib_records_use_the_same_chain() -> None:
    """A stdlib logger's record (urllib3, watchdog, ...) comes out as the same JSON shape."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("watchdog.observers").warning("queue %s overflowed", "inotify")
    [line] = json_lines(out)
    assert line["event"] == "queue inotify overflowed"
    assert (line["level"], line["logger"]) == ("warning", "watchdog.observers")
    assert "timestamp" in line


def test_levels_filter_and_urllib3_is_quiet_unless_debug() -> None:
    """At info, debug events and urllib3 info records are dropped; at debug both appear."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.get_logger("syncd.api").debug("request_sent")
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection")
    logging.getLogger("urllib3.connectionpool").warning("Retrying")
    assert [line["event"] for line in json_lines(out)] == ["Retrying"]

    out = io.StringIO()
    configure_logging("debug", "json", out)
    structlog.get_logger("syncd.api").debug("request_sent")
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection")
    assert [line["event"] for line in json_lines(out)] == [
        "request_sent",
        "Starting new HTTPS connection",
    ]


def test_exceptions_are_structured_dicts_in_json() -> None:
    """`log.exception` renders the exception as a list of dicts, not a text blob."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise ValueError("bad sidecar")
    except ValueError:
        structlog.get_logger("syncd.scanner").exception("scan_failed")
    [line] = json_lines(out)
    [exc] = line["exception"]  # type: ignore[misc]
    assert exc["exc_type"] == "ValueError"
    assert exc["exc_value"] == "bad sidecar"
    assert exc["frames"][-1]["name"] == "test_exceptions_are_structured_dicts_in_json"
    assert "locals" not in exc["frames"][-1]


def test_console_output_on_a_terminal() -> None:
    """On a TTY outside systemd, auto picks readable console lines, not JSON."""
    out = FakeTTY()
    configure_logging("info", "auto", out, environ={"NO_COLOR": "1"})
    structlog.get_logger("syncd.daemon").info("daemon_started", root="/data/pets")
    text = out.getvalue()
    assert "daemon_started" in text
    assert "root=/data/pets" in text
    assert "[info     ]" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("var", ["JOURNAL_STREAM", "INVOCATION_ID"])
def test_auto_is_json_under_systemd_even_on_a_terminal(var: str) -> None:
    """JOURNAL_STREAM or INVOCATION_ID (set by systemd) make auto choose JSON."""
    out = FakeTTY()
    configure_logging("info", "auto", out, environ={var: "8:12345"})
    structlog.get_logger("syncd").info("daemon_started")
    assert json_lines(out)[0]["event"] == "daemon_started"


def test_configure_twice_keeps_one_handler_and_moves_streams() -> None:
    """A second call replaces our handler: each event is written once, to the new stream."""
    first, second = io.StringIO(), io.StringIO()
    log = structlog.get_logger("syncd.cli")
    configure_logging("info", "json", first)
    log.info("one")
    configure_logging("info", "json", second)
    log.info("two")
    logging.getLogger("urllib3").warning("three")
    assert [line["event"] for line in json_lines(first)] == ["one"]
    assert [line["event"] for line in json_lines(second)] == ["two", "three"]
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "syncd"]
    assert len(ours) == 1


def test_default_stream_follows_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream, events go to sys.stderr as it is when they are logged."""
    configure_logging("info", "json")
    structlog.get_logger("syncd.cli").info("to_current_stderr")
    err = capsys.readouterr().err
    assert json.loads(err)["event"] == "to_current_stderr"


def test_other_handlers_get_structlog_events_already_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redaction runs before the stdlib record exists, so foreign handlers see no secret either."""
    register_secret(SECRET)
    configure_logging("debug", "json", io.StringIO())
    with caplog.at_level(logging.DEBUG):
        structlog.get_logger("syncd.api").debug("sent", header=HEADER, raw=SECRET)
    assert "sent" in caplog.text
    assert SECRET not in caplog.text
    assert "hdr-4444555566667777" not in caplog.text


def test_capture_logs_still_works_after_configure() -> None:
    """Loggers are not cached, so structlog.testing.capture_logs sees module-level loggers."""
    log = structlog.get_logger("syncd.ledger")
    configure_logging("info", "json", io.StringIO())
    log.info("before")
    with capture_logs() as events:
        log.info("ledger_opened", path="/tmp/x.db")
    assert events == [{"event": "ledger_opened", "path": "/tmp/x.db", "log_level": "info"}]


def test_bad_level_or_format_is_refused() -> None:
    """Unknown level or format names raise ValueError instead of silently defaulting."""
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose", "json", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())


# --- secrets ----------------------------------------------------------------------------------


def emit_everything(log_name: str) -> None:
    """Log the secret and the header every way a careless caller could, at every level."""
    log = structlog.get_logger(log_name)
    log.debug("request_sent", headers={"Authorization": f"Key {SECRET}"}, note=f"key={SECRET}")
    log.info(f"plain message with {SECRET}")
    log.warning("header_echo", detail=HEADER, nested=[{"value": f"x {SECRET} y"}])
    log.error("kwarg", api_key=SECRET, token="tok-9999")
    log.info("positional %s and %s", SECRET, HEADER)
    stdlib = logging.getLogger("urllib3.connectionpool")
    stdlib.debug("send: %r", f"GET / HTTP/1.1\r\n{HEADER}\r\n")
    stdlib.warning("Retrying with %s", {"Authorization": f"Key {SECRET}"})
    stdlib.error("raw key %s", SECRET, extra={"auth": HEADER})
    try:
        raise RuntimeError(f"401 for key {SECRET} with {HEADER}")
    except RuntimeError:
        log.exception("api_failed")
        stdlib.exception("pool failed")
        log.error("again", exc_info=True)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_and_authorization_never_reach_the_output(fmt: str) -> None:
    """A registered secret and Authorization values vanish from events, records and tracebacks."""
    register_secret(SECRET)
    out = FakeTTY() if fmt == "console" else io.StringIO()
    configure_logging("debug", fmt, out, environ={"NO_COLOR": "1"})
    emit_everything("syncd.api")
    text = out.getvalue()
    assert "api_failed" in text
    assert "pool failed" in text
    assert "RuntimeError" in text
    assert text.count("[redacted]") >= 10
    assert SECRET not in text
    assert SECRET[4:20] not in text
    assert "hdr-4444555566667777" not in text
    assert "tok-9999" not in text


def test_unregistered_header_values_are_scrubbed_by_pattern() -> None:
    """Authorization headers are scrubbed even when their key was never registered."""
    samples = {
        "Authorization: Key abc": "Authorization: Key [redacted]",
        "authorization=Bearer tok123,": "authorization=Bearer [redacted],",
        "{'Authorization': 'Key abcdef'}": "{'Authorization': '[redacted]'}",
        '{"authorization": "Key 0123456789abcdef"}': '{"authorization": "[redacted]"}',
        "sent Key 0123456789abcdef0123 to the api": "sent Key [redacted] to the api",
        "Key findings of the scan": "Key findings of the scan",
    }
    for text, expected in samples.items():
        assert scrub(text) == expected


def test_short_secrets_are_not_registered() -> None:
    """A secret under MIN_SECRET_LENGTH characters is ignored rather than shredding every line."""
    register_secret("ab")
    register_secret("")
    assert scrub("a cab sat") == "a cab sat"


def test_json_escaped_secret_is_scrubbed_from_rendered_lines() -> None:
    """A secret with characters JSON escapes is still caught after rendering."""
    secret = 'we"ird\\secret-0001'
    register_secret(secret)
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.get_logger("syncd").info("odd", value=holder_type(secret)())
    assert "ird" not in out.getvalue()
    assert logs.REDACTED in out.getvalue()


def holder_type(secret: str) -> type:
    """A class whose repr holds the secret, so only the post-render scrub can catch it."""
    return type("Holder", (), {"__repr__": lambda self: f"Holder({secret!r})"})


@given(st.text())
def test_scrub_is_idempotent(text: str) -> None:
    """Scrubbing twice equals scrubbing once, so pre- and post-render passes agree."""
    register_secret("idem-secret-0001")
    once = scrub(text)
    assert scrub(once) == once


@given(st.text(), st.text())
def test_registered_secret_never_survives_scrub(prefix: str, suffix: str) -> None:
    """Whatever surrounds it, a registered secret does not survive scrub()."""
    register_secret(SECRET)
    assert SECRET not in scrub(prefix + SECRET + suffix)
