"""Logging, configured once: structlog and stdlib records through one chain, secrets scrubbed.

JSON lines (for journald) when the stream is not a terminal or we run under systemd, readable
console lines on a terminal. Every event, from structlog or from stdlib loggers such as urllib3 and
watchdog, passes the same redaction before and after rendering: registered secrets and anything
that looks like an `Authorization` header never reach the output.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")
#: Secrets shorter than this are not registered: scrubbing them would shred every line.
MIN_SECRET_LENGTH = 4
#: Dict keys whose values are always replaced, whatever they hold.
SENSITIVE_KEYS = frozenset(
    {"authorization", "api_key", "apikey", "pat", "token", "secret", "password"}
)

_HANDLER_NAME = "syncd"
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secret_re: re.Pattern[str] | None = None

# '"Authorization": "Key abc"' or "'authorization': 'Bearer abc'" (JSON, dict reprs)
_AUTH_QUOTED = re.compile(r"""(?i)(["']authorization["']\s*[:=]\s*)(["'])(?:(?!\2).)*\2""")
# 'Authorization: Key abc' (header lines), 'authorization=abc'
_AUTH_PLAIN = re.compile(
    r"""(?i)(\bauthorization\s*[:=]\s*)((?:key|bearer|token|basic)\s+)?([^\s"',;}\]]+)"""
)
# a bare 'Key 0123abcd...' token as in the header value (at least 8 chars, with a digit)
_KEY_TOKEN = re.compile(r"\b(Key|Bearer)\s+(?=[\w.~+/=-]*\d)[\w.~+/=-]{8,}")


def register_secret(value: str) -> None:
    """Scrub `value` (and its JSON- and repr-escaped spellings) from every log line from now on."""
    global _secrets, _secret_re  # noqa: PLW0603 - one registry per process, swapped atomically
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        spellings = {value, _json_inner(value), repr(value)[1:-1], _json_inner(repr(value)[1:-1])}
        if spellings <= _secrets:
            return
        _secrets = _secrets | spellings
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def _json_inner(text: str) -> str:
    return json.dumps(text)[1:-1]


def scrub(text: str) -> str:
    """`text` with registered secrets and authorization values replaced by [redacted]."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "authorization" in text.lower():
        text = _AUTH_QUOTED.sub(rf"\1\2{REDACTED}\2", text)
        text = _AUTH_PLAIN.sub(_redact_auth, text)
    if "Key" in text or "Bearer" in text:
        text = _KEY_TOKEN.sub(rf"\1 {REDACTED}", text)
    return text


def _redact_auth(match: re.Match[str]) -> str:
    if match.group(3).startswith(REDACTED[:-1]):
        return match.group(0)  # already scrubbed: keep scrub() idempotent
    return match.group(1) + (match.group(2) or "") + REDACTED


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if _is_sensitive(k) else _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _is_sensitive(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SENSITIVE_KEYS


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: scrub every string in the event, recursively; sensitive keys lose their value."""
    return _scrub_value(event_dict)


def _redact_rendered(_logger: WrappedLogger, _method: str, line: Any) -> Any:
    """Last processor: scrub the rendered line too (reprs of objects, traceback text)."""
    return scrub(line) if isinstance(line, str) else line


def _json_default(value: Any) -> Any:
    """JSON for what json cannot encode: paths as text, times in ISO form, the rest as repr()."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def use_console(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """What "auto" picks: console on a terminal, unless systemd (journald) runs us."""
    if environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (replaces our handler).

    Without `stream`, records go to whatever `sys.stderr` is when they are written (so a
    replaced stderr, as under click's CliRunner or pytest's capsys, is followed, never a stale
    one). Loggers are not cached on first use, so reconfiguring and `structlog.testing.capture_logs`
    keep working for module-level loggers; the cost is one config lookup per bound logger.
    """
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    target = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and use_console(target, environ))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            redact,  # before the record exists, so no handler ever sees the raw values
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    final: list[Processor]
    if console:
        colors = not environ.get("NO_COLOR") and bool(getattr(target, "isatty", bool)())
        final = [
            structlog.processors.format_exc_info,
            redact,
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    else:
        final = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redact,
            structlog.processors.JSONRenderer(default=_json_default),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(logging.NOTSET if level == "debug" else logging.WARNING)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to the current `sys.stderr`, looked up at each record."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr
