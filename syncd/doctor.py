"""`syncd doctor`: check everything `syncd run` needs, and say how to fix what is wrong.

Each check returns ok / warn / fail / skip with one line of detail and, when not ok, a fix.
Nothing is written: the ledger is opened read-only without its lock, the remote gets one
authenticated read (`GET inputs/status`).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from syncd.config import Config, check_root, load_config, resolve_api_key
from syncd.errors import (
    ApiError,
    AuthError,
    ConfigError,
    LedgerError,
    TransientError,
    os_error_reason,
)
from syncd.sidecar import is_sidecar_name
from syncd.watcher import path_filter, suggested_max_user_watches

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
INOTIFY_DIR = Path("/proc/sys/fs/inotify")
#: A tree using more than this share of max_user_watches leaves too little for editors/IDEs.
WATCH_SHARE = 0.5


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tree:
    dirs: int = 0
    images: int = 0
    unreadable: tuple[str, ...] = ()


def run_checks(
    config_path: Path | None,
    *,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] = os.environ,
    remote: bool = True,
    inotify_dir: Path = INOTIFY_DIR,
    api_factory: Callable[..., Any] | None = None,
) -> list[Check]:
    """Run every check in order; later checks are skipped when what they need failed."""
    checks: list[Check] = []
    try:
        config = load_config(config_path, environ=environ, overrides=overrides or {})
    except ConfigError as exc:
        checks.append(
            Check(
                "config",
                FAIL,
                str(exc),
                "fix the setting named above; every key "
                "is described in config.example.toml and docs/configuration.md",
            )
        )
        for name in ("credentials", "remote", "root", "inotify", "ledger"):
            checks.append(Check(name, SKIP, "needs a valid configuration"))
        return checks
    where = str(config_path) if config_path else "environment"
    checks.append(
        Check(
            "config",
            OK,
            f"{where}: source {config.source.name!r}, root "
            f"{config.source.root}, remote {config.remote.api_base}",
        )
    )
    key_check, key = _credentials(config, environ)
    checks.append(key_check)
    if not remote:
        checks.append(Check("remote", SKIP, "--no-remote given"))
    elif key is None:
        checks.append(Check("remote", SKIP, "needs an API key"))
    else:
        checks.append(_remote(config, key, api_factory))
    root_check, tree = _root(config)
    checks.append(root_check)
    checks.append(_inotify(tree, inotify_dir))
    checks.append(_ledger(config))
    return checks


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<12} {c.detail}")
        if c.fix and c.status in (WARN, FAIL):
            lines.append(f"{'':<5} {'':<12} fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{failed} failed, {warned} warnings")
    return "\n".join(lines)


# --- the checks -----------------------------------------------------------------------------


def _credentials(config: Config, environ: Mapping[str, str]) -> tuple[Check, Any]:
    fix = (
        f"export {config.remote.api_key_env}=<your PAT>, or set remote.api_key_file; for "
        f"the system unit put the key in /etc/syncd/{config.source.name}.pat (mode 0600), which "
        "it loads with LoadCredential=; for the user unit in ~/.config/syncd/clarifai.pat (check "
        "it with SYNCD_REMOTE_API_KEY_FILE=~/.config/syncd/clarifai.pat syncd doctor ...)"
    )
    try:
        key = resolve_api_key(config, environ)
    except ConfigError as exc:
        return Check("credentials", FAIL, str(exc), fix), None
    path = config.remote.api_key_file
    if key.source.startswith("file ") and path is not None:
        try:
            mode = Path(key.source.removeprefix("file ")).stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return (
                Check(
                    "credentials",
                    WARN,
                    f"key read from {key.source}, which other users "
                    f"can read (mode {oct(mode & 0o777)})",
                    f"chmod 600 {key.source.removeprefix('file ')}",
                ),
                key,
            )
    if not (config.remote.user_id and config.remote.app_id):
        return (
            Check(
                "credentials",
                WARN,
                f"key read from {key.source}; remote.user_id or "
                "remote.app_id is not set, which only works with an app-scoped key",
                'set remote.user_id ("me" works with a PAT) and remote.app_id',
            ),
            key,
        )
    return Check("credentials", OK, f"key read from {key.source}"), key


def _remote(config: Config, key: Any, api_factory: Callable[..., Any] | None) -> Check:
    remote = config.remote
    from syncd.api import api_for  # noqa: PLC0415 - requests is only needed here

    api = api_for(
        config,
        key,
        factory=api_factory,
        workers=1,
        max_requests_per_second=None,
        timeout=min(config.remote.timeout, 15.0),
        max_attempts=1,
    )
    started = time.monotonic()
    try:
        api.check_auth()
    except AuthError as exc:
        return Check(
            "remote",
            FAIL,
            str(exc),
            "use a personal access token with the Inputs "
            "scopes, and check remote.user_id and remote.app_id",
        )
    except TransientError as exc:
        return Check(
            "remote",
            FAIL,
            f"{remote.api_base} is unreachable: {exc}",
            "check the network, a proxy (HTTPS_PROXY) and remote.api_base",
        )
    except ApiError as exc:
        return Check(
            "remote",
            FAIL,
            f"{remote.api_base} refused the request: {exc}",
            "check remote.user_id and remote.app_id (the app must exist)",
        )
    finally:
        api.close()
    ms = round((time.monotonic() - started) * 1000)
    return Check("remote", OK, f"{remote.api_base} reachable, key accepted ({ms} ms)")


def _root(config: Config) -> tuple[Check, _Tree | None]:
    root = config.source.root
    problem = check_root(config)
    if problem is not None:
        return Check(
            "root",
            FAIL,
            problem,
            f"mount the disk or fix source.root; the service "
            f"user needs read access: chmod -R g+rX {root} and add it to the group",
        ), None
    tree = _walk(root, path_filter(config.source.include, config.source.exclude))
    detail = f"{root}: {tree.dirs} folders, {tree.images} images"
    if tree.unreadable:
        shown = ", ".join(tree.unreadable[:5])
        more = f" and {len(tree.unreadable) - 5} more" if len(tree.unreadable) > 5 else ""
        return Check(
            "root",
            WARN,
            f"{detail}; cannot read {shown}{more}",
            f"give the service user read access: chmod -R g+rX {root} (and make it a "
            "member of the files' group), see deploy/README.md",
        ), tree
    if tree.images == 0:
        return Check(
            "root",
            WARN,
            f"{detail}: no images (an unmounted disk, or wrong source.include?)",
            "check source.root and source.include",
        ), tree
    return Check("root", OK, f"{detail}, all readable"), tree


def _walk(root: Path, relevant: Callable[[str, bool], bool]) -> _Tree:
    tree = _Tree()
    unreadable: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else str(root)
        try:
            entries = list(os.scandir(full))
        except OSError:
            unreadable.append(rel or ".")
            continue
        tree.dirs += 1
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not relevant(child, is_dir):
                continue
            if is_dir:
                stack.append(child)
            elif not is_sidecar_name(entry.name):
                tree.images += 1
                if not os.access(entry.path, os.R_OK):
                    unreadable.append(child)
            elif not os.access(entry.path, os.R_OK):
                unreadable.append(child)
    tree.unreadable = tuple(sorted(unreadable))
    return tree


def _inotify(tree: _Tree | None, inotify_dir: Path) -> Check:
    if tree is None:
        return Check("inotify", SKIP, "needs a readable root")
    try:
        watches = int((inotify_dir / "max_user_watches").read_text())
        instances = int((inotify_dir / "max_user_instances").read_text())
    except (OSError, ValueError):
        return Check("inotify", SKIP, "no inotify limits to read (not Linux): syncd polls")
    n = suggested_max_user_watches(tree.dirs)
    fix = (
        f"sudo sysctl fs.inotify.max_user_watches={n}; to keep it after a reboot: echo "
        f"fs.inotify.max_user_watches={n} | sudo tee /etc/sysctl.d/90-syncd.conf"
    )
    detail = (
        f"{tree.dirs} folders need {tree.dirs} watches; max_user_watches={watches}, "
        f"max_user_instances={instances} (shared by every program of the same user)"
    )
    if tree.dirs >= watches:
        return Check(
            "inotify", FAIL, detail + ": over the limit, syncd would fall back to slow polling", fix
        )
    if tree.dirs > watches * WATCH_SHARE:
        return Check("inotify", WARN, detail + ": little headroom left for other programs", fix)
    return Check("inotify", OK, detail)


def _ledger(config: Config) -> Check:
    path = config.ledger.path
    try:
        exists = path.exists()
    except OSError as exc:  # a folder on the way this user may not enter, a name too long
        return Check(
            "ledger",
            FAIL,
            f"{path} cannot be reached: {os_error_reason(exc)}",
            "run doctor as the user syncd runs as, and give [ledger] path a place that user "
            "can write (under systemd: StateDirectory= with SYNCD_LEDGER_PATH)",
        )
    if not exists:
        # (os.path.exists: a parent this user cannot stat counts as absent, not an error)
        parent = next((p for p in (path.parent, *path.parent.parents) if os.path.exists(p)), None)
        if parent is not None and os.access(parent, os.W_OK | os.X_OK):
            return Check("ledger", OK, f"{path} does not exist yet; it is created at first run")
        return Check(
            "ledger",
            FAIL,
            f"{path} cannot be created ({parent} is not writable)",
            "set [ledger] path to a writable place (under systemd: StateDirectory= "
            "with SYNCD_LEDGER_PATH)",
        )
    holder = _lock_holder(path)
    try:
        from syncd.ledger import Ledger  # noqa: PLC0415

        ledger = Ledger.open(path, lock=False)
    except LedgerError as exc:
        return Check(
            "ledger",
            FAIL,
            str(exc),
            f"move it aside and rebuild it from the remote: "
            f"syncd reconcile --rebuild-ledger --config {config.config_path or '...'}",
        )
    try:
        counts = ledger.counts_by_state()
        errors = len(ledger.input_errors())
        owner = ledger.get_meta("source_name")
        size = ledger.size_bytes()
    finally:
        ledger.close()
    states = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    running = f"; in use by syncd pid {holder}" if holder else ""
    detail = f"{path}: {size} bytes, inputs: {states or 'none'}{running}"
    if owner is not None and owner != config.source.name:
        return Check(
            "ledger",
            FAIL,
            f"{detail}; it belongs to source {owner!r}, not {config.source.name!r}",
            "use a different [ledger] path per source",
        )
    if errors:
        return Check(
            "ledger",
            WARN,
            f"{detail}; {errors} inputs failed",
            "see `syncd status` for the reasons",
        )
    return Check("ledger", OK, detail)


def _lock_holder(path: Path) -> int | None:
    """The pid written in the ledger's lock file, if that process is alive."""
    try:
        text = Path(f"{path}.lock").read_text().strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
