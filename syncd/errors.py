"""The error tree. The CLI turns each into one line and an exit code; see README "Exit codes"."""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""

    exit_code = 1


class ConfigError(SyncdError):
    """The configuration (file, environment, flags or credentials) is unusable."""

    exit_code = 2


class SidecarError(SyncdError):
    """A sidecar label file is invalid; the message names the path and the reason."""


class LedgerError(SyncdError):
    """The ledger file cannot be used (corrupt, newer schema, unreadable)."""

    exit_code = 2


class LedgerLocked(LedgerError):
    """Another syncd process holds this ledger."""


class ApiError(SyncdError):
    """The remote answered with an error, or could not be reached."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        description: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.description = description
        self.details = details


class AuthError(ApiError):
    """The key was refused (401, 11002/11007/11008/11009): stop at once, mark nothing failed."""


class TransientError(ApiError):
    """A retryable failure (5xx, 429, connection) that outlived its retries.

    `retry_after`: the wait (seconds) the server asked for in its last answer, if it did: the
    daemon waits at least that long before its next try.
    """

    retry_after: float | None = None


def os_error_reason(exc: OSError) -> str:
    """Why a file could not be read, for a person.

    Files are opened without blocking (a file swapped for a named pipe must not hang a pass),
    so a file another program holds a lease on (Samba oplocks, NFS delegations) answers
    EWOULDBLOCK instead of making the open wait: said so, since it is retried next pass.
    """
    if isinstance(exc, BlockingIOError):
        return "busy: another program holds a lease on it, or it is a pipe (tried again next pass)"
    return exc.strerror or str(exc) or type(exc).__name__


class ThrottledError(TransientError):
    """429 / CONN_THROTTLED that outlived its retries."""


class WaitRequested(TransientError):
    """The remote asked for a wait (Retry-After) longer than the client sleeps inside a request
    (its `max_wait`, the daemon's): the pass stops at once, and the caller waits `retry_after`
    where it stays responsive."""


class RejectedError(ApiError):
    """The remote rejected the whole request (4xx other than auth); retrying will not help."""

    exit_code = 1


class DeleteGuardError(SyncdError):
    """A pass would delete more than the guards allow, or the root looks unmounted."""

    exit_code = 4
