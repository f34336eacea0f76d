"""Configuration: defaults, then a TOML file, then `SYNCD_<SECTION>_<KEY>`, then flags.

Loading is pure (it never looks at the dataset root); `check_root` and `resolve_api_key` are the
two places that touch the filesystem. Every error is a `ConfigError` of exactly one line naming
where the value came from, the dotted key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any
from urllib.parse import urlsplit

import structlog

from syncd import logs
from syncd.errors import ConfigError

log = structlog.get_logger(__name__)

DEFAULT_INCLUDE = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.tif", "*.tiff", "*.bmp", "*.webp")
DEFAULT_EXCLUDE = (".*", "*~", "*.tmp", "*.part", "*.crdownload", "*.swp")
ENV_PREFIX = "SYNCD_"
SOURCE_NAME_RE = r"[A-Za-z0-9_.-]{1,64}"
#: Key names refused anywhere in the file (compared lower-case, '-' read as '_').
SECRET_KEYS = frozenset(
    {"api_key", "apikey", "key", "token", "pat", "secret", "password", "access_token", "api_token"}
)
_SECRET_HINT = (
    "secrets are never read from the config file: put the key in the environment variable "
    "named by remote.api_key_env (default CLARIFAI_PAT) or in the file named by "
    "remote.api_key_file"
)

# --- validation rules, attached to fields as metadata ------------------------------------------

Check = Callable[[Any], str | None]


def _rule(check: Check, normalize: Callable[[Any], Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType({"check": check, "normalize": normalize})


def _between(lo: float, hi: float, why: str = "") -> Mapping[str, Any]:
    tail = f" ({why})" if why else ""
    return _rule(lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}{tail}")


def _at_least(lo: float) -> Mapping[str, Any]:
    return _rule(lambda v: None if v >= lo else f"must be at least {lo}")


def _positive(hi: float) -> Mapping[str, Any]:
    return _rule(lambda v: None if 0 < v <= hi else f"must be greater than 0 and at most {hi}")


def _one_of(*choices: str) -> Mapping[str, Any]:
    msg = "must be one of " + ", ".join(choices)
    return _rule(lambda v: None if v in choices else msg, normalize=str.lower)


def _pattern(regex: str, what: str) -> Mapping[str, Any]:
    compiled = re.compile(regex)
    return _rule(lambda v: None if compiled.fullmatch(v) else f"must be {what} ({regex})")


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "must be an http:// or https:// URL"


def _check_id(value: str | None) -> str | None:
    if value is None or re.fullmatch(r"[^\s/]{1,128}", value):
        return None
    return "must be 1 to 128 characters without spaces or slashes"


def _check_globs(nonempty: bool) -> Check:
    def check(patterns: tuple[str, ...]) -> str | None:
        if nonempty and not patterns:
            return "must list at least one pattern (nothing would ever be synced)"
        if any(not p.strip("/") for p in patterns):
            return "must not contain an empty pattern"
        return None

    return check


_URL = _rule(_check_url, normalize=lambda v: v if v is None else v.rstrip("/"))
_ID = _rule(_check_id)

# --- the configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """The dataset folder: where it is, what it is called, which files count.

    Patterns are globs matched case-insensitively by the scanner: without '/' against a name
    (include: the file name; exclude: every path component, so a dot-folder hides its
    subtree), with '/' against the whole relative path.
    """

    root: Path
    name: str = field(metadata=_pattern(SOURCE_NAME_RE, "1 to 64 letters, digits, '_', '.' or '-'"))
    include: tuple[str, ...] = field(default=DEFAULT_INCLUDE, metadata=_rule(_check_globs(True)))
    exclude: tuple[str, ...] = field(default=DEFAULT_EXCLUDE, metadata=_rule(_check_globs(False)))
    labels_from_dirs: bool = False
    follow_symlinks: bool = False
    url_base: str | None = field(default=None, metadata=_URL)


@dataclass(frozen=True)
class RemoteConfig:
    """Where the inputs go, and where the API key is read from (never the key itself)."""

    api_base: str = field(default="https://api.clarifai.com", metadata=_URL)
    user_id: str | None = field(default=None, metadata=_ID)
    app_id: str | None = field(default=None, metadata=_ID)
    dataset_id: str | None = field(default=None, metadata=_ID)
    api_key_env: str = field(
        default="CLARIFAI_PAT",
        metadata=_pattern(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name"),
    )
    api_key_file: Path | None = None
    timeout: float = field(default=30.0, metadata=_positive(600))


@dataclass(frozen=True)
class SyncConfig:
    """How hard and how carefully to push."""

    batch_size: int = field(default=128, metadata=_between(1, 128, "the API's limit per request"))
    workers: int = field(default=4, metadata=_between(1, 32))
    max_requests_per_second: float = field(default=10.0, metadata=_positive(1000))
    settle_seconds: float = field(default=2.0, metadata=_at_least(0))
    rescan_interval: float = field(default=3600.0, metadata=_at_least(0))
    max_delete: int = field(default=1000, metadata=_at_least(0))
    max_delete_fraction: float = field(default=0.5, metadata=_between(0, 1))
    poll_timeout: float = field(default=600.0, metadata=_at_least(0))
    max_file_bytes: int = field(
        default=20_000_000, metadata=_between(1, 20_000_000, "the API's image size limit")
    )


@dataclass(frozen=True)
class LedgerConfig:
    """Where the SQLite ledger lives (default `$XDG_STATE_HOME/syncd/<source.name>.db`)."""

    path: Path


@dataclass(frozen=True)
class LogConfig:
    """Log level and output format."""

    level: str = field(default="info", metadata=_one_of("debug", "info", "warning", "error"))
    format: str = field(default="auto", metadata=_one_of("auto", "json", "console"))


SECTIONS: Mapping[str, type] = MappingProxyType(
    {
        "source": SourceConfig,
        "remote": RemoteConfig,
        "sync": SyncConfig,
        "ledger": LedgerConfig,
        "log": LogConfig,
    }
)


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    source: SourceConfig
    remote: RemoteConfig
    sync: SyncConfig
    ledger: LedgerConfig
    log: LogConfig
    config_path: Path | None = None

    def with_overrides(self, **dotted: object) -> Config:
        """A copy with dotted keys replaced (`**{"sync.batch_size": 64}` or `sync__batch_size=64`).

        Values are validated as flags are; None is ignored. Derived values (source.name,
        ledger.path) are kept as they are: override them too when overriding source.root.
        """
        raw = {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
        overrides = {k.replace("__", "."): v for k, v in dotted.items()}
        _apply_overrides(raw, overrides, Path.cwd(), os.environ)
        return _build(raw, self.config_path, os.environ)


def config_keys() -> Iterator[tuple[str, str, dataclasses.Field[Any]]]:
    """Every (section, key, field) in the schema, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f.name, f


def env_var_name(section: str, key: str) -> str:
    """The environment variable that sets `section.key`, e.g. SYNCD_SYNC_BATCH_SIZE."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


_HINTS: Mapping[str, Mapping[str, Any]] = {s: typing.get_type_hints(c) for s, c in SECTIONS.items()}
_FIELDS: Mapping[tuple[str, str], dataclasses.Field[Any]] = {(s, k): f for s, k, f in config_keys()}

# --- loading ------------------------------------------------------------------------------------


class _Bad(Exception):
    """A value problem, before the origin (file, variable, flag) is known."""


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = MappingProxyType({}),
) -> Config:
    """Build the configuration: defaults < file < environment < overrides (dotted keys).

    `environ` supplies the SYNCD_* variables and HOME / XDG_STATE_HOME for `~` and the ledger
    default. Override values may be typed or text (text is parsed like the environment); None
    means "flag not given". Nothing on disk but the config file itself is looked at.
    """
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if path is not None:
        _apply_file(raw, path, environ)
    _apply_environment(raw, environ)
    _apply_overrides(raw, overrides, Path.cwd(), environ)
    return _build(raw, path, environ)


def _apply_file(raw: dict[str, dict[str, Any]], path: Path, environ: Mapping[str, str]) -> None:
    where = f"{path}: "
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}invalid TOML: {_one_line(str(exc))}") from None
    secret = _find_secret(doc)
    if secret is not None:
        raise ConfigError(f"{where}{secret}: {_SECRET_HINT}")
    base = Path(os.path.abspath(path)).parent
    for section, table in doc.items():
        if section not in SECTIONS:
            raise ConfigError(where + _unknown_section(section, table))
        if not isinstance(table, dict):
            raise ConfigError(f"{where}{section} = {_show(table)}: expected a table [{section}]")
        for key, value in table.items():
            if key not in _HINTS[section]:  # the value is not shown: it may be a misnamed secret
                raise ConfigError(f"{where}{section}.{key}: {_unknown_key(section, key)}")
            try:
                typed = _from_toml(_HINTS[section][key], value)
                raw[section][key] = _finish(section, key, typed, base, environ)
            except _Bad as exc:
                raise ConfigError(f"{where}{section}.{key} = {_show(value)}: {exc}") from None


def _apply_environment(raw: dict[str, dict[str, Any]], environ: Mapping[str, str]) -> None:
    cwd = Path.cwd()
    for var in sorted(environ):
        section = next((s for s in SECTIONS if var.startswith(env_var_name(s, ""))), None)
        text = environ[var]
        if section is None or not text:
            continue
        key = var[len(env_var_name(section, "")) :].lower()
        if key in SECRET_KEYS:
            raise ConfigError(
                f"environment {var}: not a syncd setting: put the API key in the variable named "
                "by remote.api_key_env (default CLARIFAI_PAT) or in remote.api_key_file"
            )
        if key not in _HINTS[section]:
            names = [env_var_name(section, k) for k in _HINTS[section]]
            close = difflib.get_close_matches(var, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"environment {var}: not a syncd setting{hint}")
        try:
            typed = _from_text(_HINTS[section][key], text)
            raw[section][key] = _finish(section, key, typed, cwd, environ)
        except _Bad as exc:
            raise ConfigError(
                f"environment {var}: {section}.{key} = {_show(text)}: {exc}"
            ) from None


def _apply_overrides(
    raw: dict[str, dict[str, Any]],
    overrides: Mapping[str, object],
    cwd: Path,
    environ: Mapping[str, str],
) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if (section, key) not in _FIELDS:
            known = [f"{s}.{k}" for s, k in _FIELDS]
            close = difflib.get_close_matches(dotted, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"command line: {dotted}: unknown setting{hint}")
        parse = _from_text if isinstance(value, str) else _from_toml
        try:
            typed = parse(_HINTS[section][key], value)
            raw[section][key] = _finish(section, key, typed, cwd, environ)
        except _Bad as exc:
            raise ConfigError(f"command line: {dotted} = {_show(value)}: {exc}") from None


def _build(raw: dict[str, dict[str, Any]], path: Path | None, environ: Mapping[str, str]) -> Config:
    where = f"{path}: " if path is not None else ""
    source = raw["source"]
    if "root" not in source:
        raise ConfigError(
            f"{where}source.root is missing: set it to the dataset folder to mirror "
            f"(in [source] or with {env_var_name('source', 'root')})"
        )
    if "name" not in source:
        name = source["root"].name
        problem = _field_check("source", "name", name)
        if problem:
            raise ConfigError(
                f"{where}source.name = {_show(name)} (the name of source.root's folder): "
                f"{problem}; set source.name"
            )
        source["name"] = name
    if "path" not in raw["ledger"]:
        state = environ.get("XDG_STATE_HOME", "")
        base = Path(state) if os.path.isabs(state) else _home(environ) / ".local" / "state"
        raw["ledger"]["path"] = base / "syncd" / f"{source['name']}.db"
    sections = {s: cls(**raw[s]) for s, cls in SECTIONS.items()}
    return Config(**sections, config_path=Path(path) if path is not None else None)


# --- values -----------------------------------------------------------------------------------


def _kind(hint: Any) -> Any:
    """The type a field holds, with `X | None` reduced to X."""
    if isinstance(hint, UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _from_toml(hint: Any, value: Any) -> Any:
    kind = _kind(hint)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _Bad("must be a finite number")
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is Path and isinstance(value, str | os.PathLike):
        if not str(value):
            raise _Bad("must not be empty")
        return Path(value)
    if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return tuple(value)
        raise _Bad("expected a list of strings")
    raise _Bad(f"expected {_EXPECTED[kind]}, got {_type_name(value)}")


def _from_text(hint: Any, text: str) -> Any:
    """Parse an environment variable or flag text by the target field's type."""
    kind = _kind(hint)
    text = text.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _Bad("expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise _Bad("expected an integer") from None
    if kind is float:
        try:
            return _from_toml(float, float(text))
        except ValueError:
            raise _Bad("expected a number") from None
    if typing.get_origin(kind) is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return _from_toml(kind, text)


def _finish(section: str, key: str, value: Any, base: Path, environ: Mapping[str, str]) -> Any:
    """Normalize and check one typed value; paths resolve against `base`."""
    if isinstance(value, Path):
        value = _resolve_path(value, base, environ, keep_vars=key == "api_key_file")
    normalize = _FIELDS[section, key].metadata.get("normalize")
    if normalize is not None:
        value = normalize(value)
    problem = _field_check(section, key, value)
    if problem:
        raise _Bad(problem)
    return value


def _field_check(section: str, key: str, value: Any) -> str | None:
    check = _FIELDS[section, key].metadata.get("check")
    return check(value) if check is not None else None


def _resolve_path(p: Path, base: Path, environ: Mapping[str, str], *, keep_vars: bool) -> Path:
    text = str(p)
    if keep_vars and text.startswith("$"):
        return p  # e.g. ${CREDENTIALS_DIRECTORY}/clarifai-pat: expanded when the key is read
    if text == "~" or text.startswith("~/"):
        text = str(_home(environ)) + text[1:]
    return Path(os.path.abspath(os.path.join(base, text)))


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


_EXPECTED: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path (a string)",
    tuple[str, ...]: "a list of strings",
}


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    """A value as TOML would spell it, cut to one short line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | Path):
        text = json.dumps(str(value), ensure_ascii=False)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = _one_line(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _find_secret(doc: Mapping[str, Any], prefix: str = "") -> str | None:
    """The dotted name of the first secret-looking key anywhere in the document, if any."""
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if key.lower().replace("-", "_") in SECRET_KEYS:
            return dotted
        tables = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        for table in tables:
            found = _find_secret(table, dotted + ".") if isinstance(table, dict) else None
            if found:
                return found
    return None


def _unknown_section(section: str, value: Any) -> str:
    if not isinstance(value, dict):
        owners = [s for s, k, _ in config_keys() if k == section]
        if owners:
            return f"{section}: must be inside [{owners[0]}]"
        return f"{section}: unknown key at top level"
    close = difflib.get_close_matches(section, list(SECTIONS), n=1)
    hint = f"; did you mean [{close[0]}]?" if close else ""
    return f"[{section}]: unknown section{hint} (known: {', '.join(SECTIONS)})"


def _unknown_key(section: str, key: str) -> str:
    close = difflib.get_close_matches(key, list(_HINTS[section]), n=1)
    if close:
        return f"unknown key; did you mean {section}.{close[0]}?"
    owners = [s for s, k, _ in config_keys() if k == key]
    if owners:
        return f"unknown key in [{section}]; it belongs in [{owners[0]}]"
    return "unknown key"


# --- checks that touch the filesystem ------------------------------------------------------------


def check_root(config: Config) -> str | None:
    """A one-line description of what is wrong with the source root, or None if usable."""
    root = config.source.root
    try:
        st = root.stat()
    except FileNotFoundError:
        return f"source root {root} does not exist (is the disk mounted?)"
    except OSError as exc:
        return f"source root {root} cannot be read: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"source root {root} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"source root {root} cannot be listed: permission denied"
    return None


class ApiKey:
    """A resolved API key; `value` is the secret, `source` says where it came from.

    Its repr and str never show the value.
    """

    __slots__ = ("source", "value")

    def __init__(self, value: str, source: str) -> None:
        self.value = value
        self.source = source

    def __repr__(self) -> str:
        return f"ApiKey(source={self.source!r})"

    __str__ = __repr__


def resolve_api_key(config: Config, environ: Mapping[str, str] = os.environ) -> ApiKey:
    """Read the key from the variable named by remote.api_key_env, else remote.api_key_file.

    The value is registered with `syncd.logs` so it is scrubbed from every log line.
    """
    var = config.remote.api_key_env
    value = environ.get(var, "").strip()
    if value:
        key = ApiKey(value, f"environment variable {var}")
    elif config.remote.api_key_file is not None:
        key = _read_key_file(config.remote.api_key_file, environ)
    else:
        raise ConfigError(
            f"no API key: the environment variable {var} (remote.api_key_env) is not set and "
            "remote.api_key_file is not configured (under systemd: "
            "${CREDENTIALS_DIRECTORY}/clarifai-pat with LoadCredential=)"
        )
    if any(c.isspace() for c in key.value):
        raise ConfigError(f"the API key from {key.source} contains whitespace: it cannot be valid")
    logs.register_secret(key.value)
    log.debug("api_key_resolved", source=key.source)
    return key


def _read_key_file(configured: Path, environ: Mapping[str, str]) -> ApiKey:
    text = str(configured)
    if "$CREDENTIALS_DIRECTORY" in text or "${CREDENTIALS_DIRECTORY}" in text:
        creds = environ.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            raise ConfigError(
                f"remote.api_key_file = {_show(text)}: $CREDENTIALS_DIRECTORY is not set "
                "(systemd sets it for a unit with LoadCredential=)"
            )
        text = text.replace("${CREDENTIALS_DIRECTORY}", creds)
        text = text.replace("$CREDENTIALS_DIRECTORY", creds)
    if text == "~" or text.startswith("~/"):
        text = str(_home(environ)) + text[1:]
    path = Path(text)
    try:
        value = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"remote.api_key_file: cannot read {path}: {reason or exc}") from None
    if not value:
        raise ConfigError(f"remote.api_key_file: {path} is empty")
    if mode & stat.S_IROTH:
        log.warning("api_key_file_world_readable", path=str(path), mode=oct(mode & 0o777))
    return ApiKey(value, f"file {path}")
