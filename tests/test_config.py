"""Configuration loading, validation, credentials, and the example/docs that describe them."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd import logs
from syncd.config import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    SECTIONS,
    ApiKey,
    Config,
    check_root,
    config_keys,
    env_var_name,
    load_config,
    resolve_api_key,
)
from syncd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
DOCS = REPO / "docs" / "configuration.md"


def write(tmp_path: Path, text: str, name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **kwargs: object) -> Config:
    kwargs.setdefault("environ", {"HOME": str(tmp_path / "home")})
    return load_config(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]


def error_of(tmp_path: Path, text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


# --- defaults and precedence ------------------------------------------------------------------


def test_defaults_fill_everything_but_root(tmp_path: Path) -> None:
    """A file naming only the root gets every documented default."""
    config = load_text(tmp_path, '[source]\nroot = "/data/pets"\n')
    assert config.source.root == Path("/data/pets")
    assert config.source.name == "pets"
    assert config.source.include == DEFAULT_INCLUDE
    assert config.source.exclude == DEFAULT_EXCLUDE
    assert config.remote.api_base == "https://api.clarifai.com"
    assert config.remote.api_key_env == "CLARIFAI_PAT"
    assert config.remote.api_key_file is None
    assert config.sync.batch_size == 128
    assert config.sync.max_delete_fraction == 0.5
    assert config.sync.max_file_bytes == 20_000_000
    assert config.ledger.path == tmp_path / "home/.local/state/syncd/pets.db"
    assert (config.log.level, config.log.format) == ("info", "auto")
    assert config.config_path == tmp_path / "syncd.toml"


def test_ledger_default_follows_xdg_state_home(tmp_path: Path) -> None:
    """An absolute XDG_STATE_HOME holds the default ledger; a relative one is ignored."""
    text = '[source]\nroot = "/data/pets"\nname = "animals"\n'
    config = load_text(tmp_path, text, environ={"XDG_STATE_HOME": "/var/lib", "HOME": "/h"})
    assert config.ledger.path == Path("/var/lib/syncd/animals.db")
    config = load_text(tmp_path, text, environ={"XDG_STATE_HOME": "rel", "HOME": "/h"})
    assert config.ledger.path == Path("/h/.local/state/syncd/animals.db")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    """Relative paths in the file are relative to its folder; `~` is the home directory."""
    (tmp_path / "etc").mkdir()
    path = write(
        tmp_path / "etc",
        '[source]\nroot = "../data/pets"\n[ledger]\npath = "~/ledger.db"\n'
        '[remote]\napi_key_file = "keys/pat"\n',
    )
    config = load_config(path, environ={"HOME": "/home/op"})
    assert config.source.root == tmp_path / "data/pets"
    assert config.ledger.path == Path("/home/op/ledger.db")
    assert config.remote.api_key_file == tmp_path / "etc/keys/pat"


def test_credentials_directory_path_is_kept_for_later_expansion(tmp_path: Path) -> None:
    """`${CREDENTIALS_DIRECTORY}/...` is stored unexpanded: systemd sets it only in the unit."""
    config = load_text(
        tmp_path,
        '[source]\nroot = "/d"\nname = "d"\n'
        '[remote]\napi_key_file = "${CREDENTIALS_DIRECTORY}/clarifai-pat"\n',
    )
    assert str(config.remote.api_key_file) == "${CREDENTIALS_DIRECTORY}/clarifai-pat"


@pytest.mark.parametrize(
    ("file_value", "env_value", "override", "expected"),
    [
        (None, None, None, 128),
        (100, None, None, 100),
        (100, "64", None, 64),
        (100, "64", 32, 32),
        (None, None, "16", 16),
    ],
)
def test_precedence_defaults_file_environment_overrides(
    tmp_path: Path,
    file_value: int | None,
    env_value: str | None,
    override: object,
    expected: int,
) -> None:
    """Each layer beats the one before: defaults < file < SYNCD_* environment < overrides."""
    text = '[source]\nroot = "/d"\n'
    if file_value is not None:
        text += f"[sync]\nbatch_size = {file_value}\n"
    environ = {"HOME": "/h"} | ({"SYNCD_SYNC_BATCH_SIZE": env_value} if env_value else {})
    overrides = {"sync.batch_size": override} if override is not None else {}
    config = load_text(tmp_path, text, environ=environ, overrides=overrides)
    assert config.sync.batch_size == expected


def test_environment_values_are_parsed_by_field_type(tmp_path: Path) -> None:
    """Env text becomes lists, booleans, floats and paths; empty and unrelated vars are ignored."""
    environ = {
        "HOME": "/h",
        "SYNCD_SOURCE_ROOT": "/data/birds",
        "SYNCD_SOURCE_EXCLUDE": " .*, *.tmp ,",
        "SYNCD_SOURCE_LABELS_FROM_DIRS": "yes",
        "SYNCD_SYNC_SETTLE_SECONDS": "5",
        "SYNCD_REMOTE_USER_ID": "",
        "SYNCD_LEGACY_PYTHON": "/usr/bin/python3",
        "SYNCD_LOG_LEVEL": "DEBUG",
    }
    config = load_config(None, environ=environ)
    assert config.source.root == Path("/data/birds")
    assert config.source.name == "birds"
    assert config.source.exclude == (".*", "*.tmp")
    assert config.source.labels_from_dirs is True
    assert config.sync.settle_seconds == 5.0
    assert config.remote.user_id is None
    assert config.log.level == "debug"
    assert config.config_path is None


def test_overrides_ignore_none_and_accept_typed_values(tmp_path: Path) -> None:
    """Flags not given (None) change nothing; typed and text flag values are both accepted."""
    config = load_text(
        tmp_path,
        '[source]\nroot = "/d"\n[sync]\nworkers = 2\n',
        overrides={"sync.workers": None, "sync.max_delete": "7", "source.root": Path("/e")},
    )
    assert config.sync.workers == 2
    assert config.sync.max_delete == 7
    assert config.source.root == Path("/e")
    assert config.source.name == "e"


def test_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    """`settle_seconds = 5` loads as 5.0."""
    config = load_text(tmp_path, '[source]\nroot = "/d"\n[sync]\nsettle_seconds = 5\n')
    assert config.sync.settle_seconds == 5.0
    assert isinstance(config.sync.settle_seconds, float)


def test_with_overrides_validates_and_replaces_dotted_keys(tmp_path: Path) -> None:
    """`with_overrides` returns a changed copy and rejects bad values like a flag would."""
    config = load_text(tmp_path, '[source]\nroot = "/d"\n')
    changed = config.with_overrides(**{"sync.batch_size": 8}, log__level="debug")
    assert (changed.sync.batch_size, changed.log.level) == (8, "debug")
    assert config.sync.batch_size == 128
    with pytest.raises(ConfigError, match=r"^command line: sync\.batch_size = 0: must be"):
        config.with_overrides(**{"sync.batch_size": 0})


# --- one-line errors ------------------------------------------------------------------------------


def test_missing_root_names_the_key(tmp_path: Path) -> None:
    """Without source.root the error names the key and both ways to set it."""
    assert error_of(tmp_path, "[sync]\nworkers = 2\n") == (
        f"{tmp_path / 'syncd.toml'}: source.root is missing: set it to the dataset folder to "
        "mirror (in [source] or with SYNCD_SOURCE_ROOT)"
    )


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    """A typo is an error that suggests the real key."""
    assert error_of(tmp_path, '[source]\nroot = "/d"\n[sync]\nbatch_sise = 64\n') == (
        f"{tmp_path / 'syncd.toml'}: sync.batch_sise: unknown key; did you mean sync.batch_size?"
    )


def test_key_in_the_wrong_section_says_where_it_belongs(tmp_path: Path) -> None:
    """A known key under the wrong table (or at top level) points at its section."""
    message = error_of(tmp_path, '[source]\nroot = "/d"\nmax_delete = 3\n')
    assert message.endswith("source.max_delete: unknown key in [source]; it belongs in [sync]")
    message = error_of(tmp_path, 'root = "/d"\n')
    assert message == f"{tmp_path / 'syncd.toml'}: root: must be inside [source]"


def test_unknown_key_never_echoes_its_value(tmp_path: Path) -> None:
    """A misnamed secret (`api_kee`) is reported by name only, so the value stays out of logs."""
    message = error_of(tmp_path, '[source]\nroot = "/d"\n[remote]\napi_kee = "s3cr3t-value"\n')
    expected = "remote.api_kee: unknown key; did you mean remote.api_key_env?"
    assert message == f"{tmp_path / 'syncd.toml'}: {expected}"


def test_unknown_section_suggests_the_close_one(tmp_path: Path) -> None:
    """A misspelt table name is an error with a suggestion."""
    message = error_of(tmp_path, '[source]\nroot = "/d"\n[remtoe]\napp_id = "a"\n')
    assert message.endswith(
        "[remtoe]: unknown section; did you mean [remote]? "
        "(known: source, remote, sync, ledger, log)"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('workers = "4"', 'sync.workers = "4": expected an integer, got a string'),
        ("workers = true", "sync.workers = true: expected an integer, got a boolean"),
        ("settle_seconds = [1]", "sync.settle_seconds = [1]: expected a number, got a list"),
        (
            "batch_size = 129",
            "sync.batch_size = 129: must be between 1 and 128 (the API's limit per request)",
        ),
        ("max_delete_fraction = 1.5", "sync.max_delete_fraction = 1.5: must be between 0 and 1"),
        ("settle_seconds = inf", "sync.settle_seconds = inf: must be a finite number"),
        ("workers = 0", "sync.workers = 0: must be between 1 and 32"),
    ],
)
def test_bad_sync_values_are_one_line_naming_key_and_value(
    tmp_path: Path, line: str, expected: str
) -> None:
    """Wrong types and out-of-range values name the file, the key, the value and the rule."""
    message = error_of(tmp_path, f'[source]\nroot = "/d"\n[sync]\n{line}\n')
    assert message == f"{tmp_path / 'syncd.toml'}: {expected}"


def test_invalid_source_name_is_rejected(tmp_path: Path) -> None:
    """A root folder name that cannot be a source name asks for an explicit source.name."""
    message = error_of(tmp_path, '[source]\nroot = "/data/my pets"\n')
    assert message.endswith(
        'source.name = "my pets" (the name of source.root\'s folder): must be 1 to 64 letters, '
        "digits, '_', '.' or '-' ([A-Za-z0-9_.-]{1,64}); set source.name"
    )


@pytest.mark.parametrize(
    ("text", "dotted"),
    [
        ('[source]\nroot = "/d"\n[remote]\napi_key = "s3cr3t-value"\n', "remote.api_key"),
        ('token = "s3cr3t-value"\n[source]\nroot = "/d"\n', "token"),
        ('[source]\nroot = "/d"\n[sync]\nPAT = "s3cr3t-value"\n', "sync.PAT"),
        ('[source]\nroot = "/d"\n[remote]\napi-key = "s3cr3t-value"\n', "remote.api-key"),
        (
            '[source]\nroot = "/d"\n[[extra]]\nx = 1\n[[extra]]\npassword = "s3cr3t"\n',
            "extra.password",
        ),
    ],
)
def test_secret_in_file_is_refused_without_echoing_it(
    tmp_path: Path, text: str, dotted: str
) -> None:
    """A key, token, pat, secret (...) anywhere in the file is refused, value unshown."""
    message = error_of(tmp_path, text)
    assert message == (
        f"{tmp_path / 'syncd.toml'}: {dotted}: secrets are never read from the config file: "
        "put the key in the environment variable named by remote.api_key_env (default "
        "CLARIFAI_PAT) or in the file named by remote.api_key_file"
    )
    assert "s3cr3t" not in message


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    """Broken TOML is one line with the parser's position."""
    message = error_of(tmp_path, '[source]\nroot = "/d"\nbatch size = 3\n')
    assert message == (
        f"{tmp_path / 'syncd.toml'}: invalid TOML: Expected '=' after a key in a key/value pair "
        "(at line 3, column 7)"
    )


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"cannot read the config file: No such file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    """Bad or unknown SYNCD_* variables name the variable, the key and the value."""
    environ = {"SYNCD_SOURCE_ROOT": "/d", "SYNCD_SYNC_BATCH_SIZE": "lots"}
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert str(info.value) == (
        'environment SYNCD_SYNC_BATCH_SIZE: sync.batch_size = "lots": expected an integer'
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"SYNCD_SOURCE_ROOT": "/d", "SYNCD_SYNC_BATCHSIZE": "3"})
    assert str(info.value) == (
        "environment SYNCD_SYNC_BATCHSIZE: not a syncd setting; did you mean SYNCD_SYNC_BATCH_SIZE?"
    )
    with pytest.raises(ConfigError, match=r"^environment SYNCD_REMOTE_API_KEY: not a syncd"):
        load_config(None, environ={"SYNCD_SOURCE_ROOT": "/d", "SYNCD_REMOTE_API_KEY": "x"})


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    """An override for a key that does not exist is refused with a suggestion."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, '[source]\nroot = "/d"\n', overrides={"sync.worker": 3})
    assert (
        str(info.value) == "command line: sync.worker: unknown setting; did you mean sync.workers?"
    )


def test_urls_and_ids_are_checked(tmp_path: Path) -> None:
    """api_base must be http(s) and loses a trailing slash; ids may not contain '/'."""
    config = load_text(
        tmp_path, '[source]\nroot = "/d"\n[remote]\napi_base = "http://127.0.0.1:8080/"\n'
    )
    assert config.remote.api_base == "http://127.0.0.1:8080"
    message = error_of(tmp_path, '[source]\nroot = "/d"\n[remote]\napi_base = "api.clarifai.com"\n')
    assert message.endswith(
        'remote.api_base = "api.clarifai.com": must be an http:// or https:// URL'
    )
    message = error_of(tmp_path, '[source]\nroot = "/d"\n[remote]\napp_id = "a/b"\n')
    expected = 'remote.app_id = "a/b": must be 1 to 128 characters without spaces or slashes'
    assert message.endswith(expected)


# --- root and file selection ------------------------------------------------------------------


def test_missing_root_is_not_a_load_error_but_check_root_reports_it(tmp_path: Path) -> None:
    """Loading never looks at the root; check_root describes what is wrong with it."""
    config = load_text(tmp_path, f'[source]\nroot = "{tmp_path / "gone"}"\n')
    assert (
        check_root(config)
        == f"source root {tmp_path / 'gone'} does not exist (is the disk mounted?)"
    )
    (tmp_path / "file").write_text("x")
    assert check_root(config.with_overrides(**{"source.root": tmp_path / "file"})) == (
        f"source root {tmp_path / 'file'} is not a directory"
    )
    assert check_root(config.with_overrides(**{"source.root": tmp_path})) is None


def test_pattern_lists_are_checked(tmp_path: Path) -> None:
    """An empty include list or an empty pattern is refused; path patterns with '/' are kept."""
    base = '[source]\nroot = "/d"\n'
    message = error_of(tmp_path, base + "include = []\n")
    expected = "source.include = []: must list at least one pattern (nothing would ever be synced)"
    assert message.endswith(expected)
    message = error_of(tmp_path, base + 'exclude = ["*.tmp", ""]\n')
    assert message.endswith('source.exclude = ["*.tmp", ""]: must not contain an empty pattern')
    config = load_text(tmp_path, base + 'exclude = []\ninclude = ["*.JPG", "raw/*.png"]\n')
    assert config.source.exclude == ()
    assert config.source.include == ("*.JPG", "raw/*.png")


# --- credentials ------------------------------------------------------------------------------


def config_with_key_file(tmp_path: Path, key_file: str | None) -> Config:
    text = '[source]\nroot = "/d"\n'
    if key_file is not None:
        text += f'[remote]\napi_key_file = "{key_file}"\n'
    return load_text(tmp_path, text)


def test_api_key_from_environment_wins(tmp_path: Path) -> None:
    """A non-empty variable named by api_key_env is used before any key file."""
    (tmp_path / "pat").write_text("from-file-0001\n")
    config = config_with_key_file(tmp_path, str(tmp_path / "pat"))
    key = resolve_api_key(config, environ={"CLARIFAI_PAT": " from-env-0001 "})
    assert (key.value, key.source) == ("from-env-0001", "environment variable CLARIFAI_PAT")
    key = resolve_api_key(config, environ={"CLARIFAI_PAT": ""})
    assert (key.value, key.source) == ("from-file-0001", f"file {tmp_path / 'pat'}")


def test_api_key_env_names_another_variable(tmp_path: Path) -> None:
    """remote.api_key_env changes which variable is read."""
    config = load_text(tmp_path, '[source]\nroot = "/d"\n[remote]\napi_key_env = "PETS_KEY"\n')
    key = resolve_api_key(config, environ={"PETS_KEY": "pets-key-0001", "CLARIFAI_PAT": "no"})
    assert key.value == "pets-key-0001"


@pytest.mark.parametrize("spelling", ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"])
def test_api_key_from_systemd_credentials_directory(tmp_path: Path, spelling: str) -> None:
    """`$CREDENTIALS_DIRECTORY` in api_key_file is expanded from the environment at read time."""
    creds = tmp_path / "run/credentials/syncd@pets.service"
    creds.mkdir(parents=True)
    (creds / "clarifai-pat").write_text("systemd-key-0001\n")
    (creds / "clarifai-pat").chmod(0o400)
    config = config_with_key_file(tmp_path, f"{spelling}/clarifai-pat")
    key = resolve_api_key(config, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert key.value == "systemd-key-0001"
    assert key.source == f"file {creds / 'clarifai-pat'}"


def test_api_key_file_with_tilde(tmp_path: Path) -> None:
    """A leading `~` in api_key_file is the home directory."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home/pat").write_text("tilde-key-0001")
    config = config_with_key_file(tmp_path, "~/pat")
    assert resolve_api_key(config, environ={"HOME": str(tmp_path / "home")}).value == (
        "tilde-key-0001"
    )


def test_missing_credentials_name_both_places(tmp_path: Path) -> None:
    """No variable and no file: one line naming the variable and the file key."""
    with pytest.raises(ConfigError) as info:
        resolve_api_key(config_with_key_file(tmp_path, None), environ={})
    assert str(info.value) == (
        "no API key: the environment variable CLARIFAI_PAT (remote.api_key_env) is not set and "
        "remote.api_key_file is not configured (under systemd: "
        "${CREDENTIALS_DIRECTORY}/clarifai-pat with LoadCredential=)"
    )
    assert info.value.exit_code == 2


def test_credentials_directory_unset_is_explained(tmp_path: Path) -> None:
    """A `${CREDENTIALS_DIRECTORY}` path outside systemd says the variable is not set."""
    config = config_with_key_file(tmp_path, "${CREDENTIALS_DIRECTORY}/clarifai-pat")
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        resolve_api_key(config, environ={})


def test_empty_or_unreadable_key_file_names_the_file(tmp_path: Path) -> None:
    """An empty key file or one that cannot be read is a ConfigError naming the file."""
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError) as info:
        resolve_api_key(config_with_key_file(tmp_path, str(tmp_path / "empty")), environ={})
    assert str(info.value) == f"remote.api_key_file: {tmp_path / 'empty'} is empty"
    with pytest.raises(ConfigError) as info:
        resolve_api_key(config_with_key_file(tmp_path, str(tmp_path / "nope")), environ={})
    assert str(info.value) == (
        f"remote.api_key_file: cannot read {tmp_path / 'nope'}: No such file or directory"
    )
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*dir: Is a directory"):
        resolve_api_key(config_with_key_file(tmp_path, str(tmp_path / "dir")), environ={})


def test_key_with_whitespace_is_refused_without_showing_it(tmp_path: Path) -> None:
    """A key with inner whitespace cannot form a valid header; the error hides the value."""
    with pytest.raises(ConfigError) as info:
        resolve_api_key(config_with_key_file(tmp_path, None), environ={"CLARIFAI_PAT": "ab cd12"})
    assert str(info.value) == (
        "the API key from environment variable CLARIFAI_PAT contains whitespace: it cannot be valid"
    )


def test_world_readable_key_file_logs_a_warning(tmp_path: Path) -> None:
    """A key file any user can read is used, with an api_key_file_world_readable warning."""
    path = tmp_path / "pat"
    path.write_text("open-key-0001")
    path.chmod(0o644)
    with capture_logs() as events:
        key = resolve_api_key(config_with_key_file(tmp_path, str(path)), environ={})
    assert key.value == "open-key-0001"
    warnings = [e for e in events if e["event"] == "api_key_file_world_readable"]
    expected = {"log_level": "warning", "path": str(path), "mode": "0o644"}
    assert warnings == [{"event": "api_key_file_world_readable", **expected}]
    assert "open-key-0001" not in repr(events)


def test_api_key_repr_never_shows_the_value(tmp_path: Path) -> None:
    """repr(), str() and f-strings of an ApiKey show where it came from, not the secret."""
    key = resolve_api_key(
        config_with_key_file(tmp_path, None), environ={"CLARIFAI_PAT": "hidden-key-0001"}
    )
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert "hidden-key-0001" not in text
        assert "environment variable CLARIFAI_PAT" in text
    assert isinstance(key, ApiKey)


def test_resolved_key_is_registered_for_log_redaction(tmp_path: Path) -> None:
    """Once resolved, the key is scrubbed from any text the log chain renders."""
    resolve_api_key(config_with_key_file(tmp_path, None), environ={"CLARIFAI_PAT": "reg-key-0042"})
    assert logs.scrub("sent reg-key-0042 to api") == "sent [redacted] to api"


# --- the example file and the docs ------------------------------------------------------------


def test_example_config_loads() -> None:
    """config.example.toml is valid as shipped (its root need not exist)."""
    config = load_config(EXAMPLE, environ={"HOME": "/home/op"})
    assert config.source.name == "pets"
    assert config.remote.app_id == "pets"


def test_example_config_with_every_commented_key_enabled_loads(tmp_path: Path) -> None:
    """Uncommenting every `# key = value` line of the example still gives a valid config."""
    text = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", EXAMPLE.read_text(encoding="utf-8"))
    config = load_config(
        write(tmp_path, text), environ={"HOME": "/h", "CREDENTIALS_DIRECTORY": "/c"}
    )
    assert config.source.url_base == "https://images.example.com/pets"
    assert str(config.remote.api_key_file) == "${CREDENTIALS_DIRECTORY}/clarifai-pat"
    assert config.ledger.path == Path("/var/lib/syncd/pets.db")


def _example_keys() -> dict[str, set[str]]:
    """Section -> keys assigned (active or commented out) in the example file."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
            keys[section] = set()
        elif m := re.match(r"^(?:# )?(\w+) = ", line):
            keys[section].add(m.group(1))
    return keys


def test_example_and_docs_cover_every_field() -> None:
    """Every dataclass field is in the example (in its section) and in the docs with its env var."""
    example = _example_keys()
    docs = DOCS.read_text(encoding="utf-8")
    fields = {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert fields == {(s, k) for s, k, _ in config_keys()}
    assert example == {s: {k for s2, k in fields if s2 == s} for s in SECTIONS}
    for section, key in sorted(fields):
        assert f"| `{section}.{key}` |" in docs, f"{section}.{key} missing from the docs tables"
        assert f"`{env_var_name(section, key)}`" in docs


def test_example_values_equal_the_defaults_it_claims() -> None:
    """Active example values in [sync] and [log] are the built-in defaults, as its comments say."""
    doc = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for section in ("sync", "log"):
        defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
        assert doc[section] == defaults


def test_environment_is_not_read_implicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an explicit environ mapping, the process environment is not consulted."""
    monkeypatch.setitem(os.environ, "SYNCD_SYNC_WORKERS", "9")
    config = load_text(tmp_path, '[source]\nroot = "/d"\n', environ={"HOME": "/h"})
    assert config.sync.workers == 4
