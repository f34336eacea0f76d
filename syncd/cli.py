"""The `syncd` command line: parse flags, load config, call one library function, exit.

Exit codes (README "Exit codes"): 0 in step, 1 some inputs failed or are held, 2 usage or
config error, 3 remote unreachable or auth refused, 4 stopped by a delete guard.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import structlog

from syncd.config import Config, load_config
from syncd.emulator.cli import emulator_command
from syncd.engine import PassOptions, open_engine
from syncd.errors import SyncdError
from syncd.logs import configure_logging
from syncd.progress import NoProgress, progress_for
from syncd.sidecar import display_path
from syncd.status import collect_status, render_status

log = structlog.get_logger(__name__)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SYNCD_CONFIG",
    help="TOML configuration file (env SYNCD_CONFIG).",
)
log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Override [log] level.",
)
set_option = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set sync.batch_size=64 (repeatable).",
)


def _fail(exc: SyncdError) -> None:
    click.echo(f"syncd: {exc}", err=True)
    sys.exit(exc.exit_code)


def _overrides(settings: tuple[str, ...], log_level: str | None) -> dict[str, object]:
    """Flags as dotted config keys: `--set sync.batch_size=64`, `--log-level debug`."""
    flags: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        flags[key.strip()] = value
    if log_level:
        flags["log.level"] = log_level
    return flags


def _load(config_path: Path | None, settings: tuple[str, ...], log_level: str | None) -> Config:
    config = load_config(config_path, overrides=_overrides(settings, log_level))
    configure_logging(config.log.level, config.log.format)
    return config


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    try:
        yield
    except SyncdError as exc:
        _fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="syncd")
def main() -> None:
    """Keep a Clarifai application's inputs in step with an image-dataset folder."""


def program() -> None:
    """The `syncd` program (console script and `python -m syncd`): `main`, then a quick exit.

    Once the command has returned and the only thread left is this one, the process ends
    without the interpreter's teardown: freeing a pass's objects one by one took ~65 ms of
    an initial sync of 10,000 images, after the work was done. Output is flushed first;
    with another thread still alive, it exits normally (and the interpreter waits for it).
    """
    try:
        main()  # click's standalone mode: always ends in SystemExit
    except SystemExit as exc:
        status = _exit_status(exc.code)
    else:  # pragma: no cover - standalone click never returns
        status = 0
    if threading.active_count() > 1:
        sys.exit(status)
    logging.shutdown()  # flush and close log handlers, as the normal exit would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            # a closed pipe (`syncd reconcile --json | head`): the normal exit reports it
            # too, then fails with 120
            status = status or 120
    os._exit(status)


def _exit_status(code: object) -> int:
    """The exit status `sys.exit(code)` gives: None -> 0, an int as is, else printed -> 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Send no write request; leave the ledger as is.")
@click.option("--explain", is_flag=True, help="Say per path why it is hashed, sent or held.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--local",
    "local_only",
    is_flag=True,
    help="Compare the folder with the ledger only; do not list the remote.",
)
@click.option(
    "--allow-mass-delete",
    is_flag=True,
    help="Let this pass delete more than sync.max_delete / max_delete_fraction.",
)
@click.option("--no-wait", is_flag=True, help="Do not wait for remote processing to finish.")
@click.option(
    "--rebuild-ledger",
    is_flag=True,
    help="Move the ledger aside and rebuild it from the remote's ownership markers.",
)
@set_option
@log_level_option
def reconcile(
    config_path: Path | None,
    settings: tuple[str, ...],
    dry_run: bool,
    explain: bool,
    as_json: bool,
    local_only: bool,
    allow_mass_delete: bool,
    no_wait: bool,
    rebuild_ledger: bool,
    log_level: str | None,
) -> None:
    """Bring the remote in step with the folder once, then exit.

    \b
    Example:
        syncd reconcile --config pets.toml --dry-run --explain
    """
    with _errors_to_exit():
        config = _load(config_path, settings, log_level)
        engine = open_engine(
            config,
            explain=explain,
            rebuild_ledger=rebuild_ledger,
            progress=NoProgress() if as_json else progress_for(),
        )
        try:
            report = engine.sync_once(
                PassOptions(
                    local_only=local_only,
                    dry_run=dry_run,
                    allow_mass_delete=allow_mass_delete,
                    wait=not no_wait,
                )
            )
        finally:
            engine.close()
    if as_json:
        report.write_json(sys.stdout.write)  # ASCII: json.dumps escapes everything else
        sys.stdout.flush()
    else:
        _print_report(report, explain=explain)
    sys.exit(report.exit_code)


def _echo(line: str) -> None:
    """One line of report: file names with newlines or non-UTF-8 bytes are shown escaped."""
    click.echo(display_path(line))


def _print_report(report: Any, *, explain: bool) -> None:
    echo = _echo  # every line escaped the same way
    if explain:
        for row in report.explain:
            target = row.get("path") or row.get("input_id", "")
            echo(f"  {row['action']:<7} {target}: {row['why']}")
    if report.dry_run:
        echo(f"dry run: {len(report.planned)} operations would be sent")
        for op in report.planned:
            echo(f"  {op.kind.value:<7} {op.path} ({op.input_id}): {op.reason}")
    for path, why in report.held:
        echo(f"held     {path}: {why}")
    for input_id, path, why in report.failed:
        echo(f"failed   {path} ({input_id}): {why}")
    for path, why in report.orphan_sidecars:
        echo(f"orphan   {path}: {why}")
    for path, why in report.skipped:
        echo(f"skipped  {path}: {why}")
    if report.drifted:
        shown = ", ".join(report.drifted[:5]) + (" ..." if len(report.drifted) > 5 else "")
        echo(f"drift    {len(report.drifted)} inputs edited remotely set back to local: {shown}")
    for message in report.errors:
        echo(f"error    {message}")
    if report.guard:
        echo(f"guard    {report.guard}")
    if report.quick_check:
        echo(
            "in step: the folder is as the last pass left it (quick check: nothing scanned)"
            if report.local_only
            else "in step: the folder and the remote listing are as the last pass left them "
            "(quick check: nothing scanned or folded)"
        )
    foreign = "-" if report.foreign is None else report.foreign
    echo(
        f"added {report.added}, relabeled {report.relabeled}, deleted {report.deleted}, "
        f"replaced {report.replaced}, adopted {report.adopted}, failed {len(report.failed)}, "
        f"held {len(report.held)}, pending {report.pending}, foreign {foreign}; "
        f"{report.files_seen} files ({report.files_hashed} hashed), "
        f"{sum(report.requests.values())} requests, {report.bytes_sent} bytes sent, "
        f"{report.seconds:.2f}s"
    )


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@click.option(
    "--remote/--no-remote", default=True, help="Also ask the remote for its inputs/status counts."
)
@set_option
@log_level_option
def status(
    config_path: Path | None,
    settings: tuple[str, ...],
    as_json: bool,
    remote: bool,
    log_level: str | None,
) -> None:
    """Show counts by state, failures and held files, the last pass and remote counts.

    \b
    Example:
        syncd status --config pets.toml
    """
    with _errors_to_exit():
        config = _load(config_path, settings, log_level)
        info = collect_status(config, remote=remote)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(render_status(info))


@main.command("run")
@config_option
@set_option
@log_level_option
def run(config_path: Path | None, settings: tuple[str, ...], log_level: str | None) -> None:
    """Watch the folder and keep the remote in step until stopped.

    Catches up with what changed while it was not running, then sends changes within seconds.
    SIGTERM or SIGINT stop it cleanly (exit 0); SIGHUP re-reads the configuration. Under
    systemd (Type=notify) it reports readiness, status and watchdog pings.

    \b
    Example:
        syncd run --config /etc/syncd/pets.toml
    """
    # the daemon's imports (watchdog) are not paid by the one-shot commands
    from syncd.daemon import run_daemon  # noqa: PLC0415

    overrides = _overrides(settings, log_level)

    def load() -> Config:
        return load_config(config_path, overrides=overrides)

    with _errors_to_exit():
        config = load()
        configure_logging(config.log.level, config.log.format)
        code = run_daemon(config, reload_config=load)
    sys.exit(code)


@main.command()
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@click.option("--remote/--no-remote", default=True, help="Also call the API (one read).")
def doctor(
    config_path: Path | None, settings: tuple[str, ...], as_json: bool, remote: bool
) -> None:
    """Check the configuration, key, API, folder, inotify limits and ledger; suggest fixes.

    Exits 0 when nothing failed (warnings allowed), 1 otherwise.

    \b
    Example:
        syncd doctor --config /etc/syncd/pets.toml
    """
    from syncd.doctor import exit_code, render, run_checks  # noqa: PLC0415 (lazy, as in `run`)

    configure_logging("error", "auto")
    checks = run_checks(config_path, overrides=_overrides(settings, None), remote=remote)
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        click.echo(render(checks))
    sys.exit(exit_code(checks))


main.add_command(emulator_command, "emulator")
