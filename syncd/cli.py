"""The `syncd` command line: parse flags, load config, call one library function, exit.

Exit codes (README "Exit codes"): 0 in step, 1 some inputs failed or are held, 2 usage or
config error, 3 remote unreachable or auth refused, 4 stopped by a delete guard.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import structlog

from syncd.config import Config, load_config
from syncd.errors import SyncdError
from syncd.logs import configure_logging

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


def _fail(exc: SyncdError) -> None:
    click.echo(f"syncd: {exc}", err=True)
    sys.exit(exc.exit_code)


def _load(config_path: Path | None, log_level: str | None, **overrides: Any) -> Config:
    flags = {key: value for key, value in overrides.items() if value is not None}
    if log_level:
        flags["log.level"] = log_level
    config = load_config(config_path, overrides=flags)
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


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Send no write request; leave the ledger as is.")
@click.option("--explain", is_flag=True, help="Say per path why it is hashed, sent or held.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--local", "local_only", is_flag=True,
              help="Compare the folder with the ledger only; do not list the remote.")
@click.option("--allow-mass-delete", is_flag=True,
              help="Let this pass delete more than sync.max_delete / max_delete_fraction.")
@click.option("--no-wait", is_flag=True, help="Do not wait for remote processing to finish.")
@click.option("--rebuild-ledger", is_flag=True,
              help="Move the ledger aside and rebuild it from the remote's ownership markers.")
@log_level_option
def reconcile(
    config_path: Path | None,
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
    from syncd.engine import PassOptions, open_engine

    with _errors_to_exit():
        config = _load(config_path, log_level)
        engine = open_engine(config, explain=explain, rebuild_ledger=rebuild_ledger)
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
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_report(report, explain=explain)
    sys.exit(report.exit_code)


def _print_report(report: Any, *, explain: bool) -> None:
    echo: Callable[[str], None] = lambda line: click.echo(line, err=False)  # noqa: E731
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
    for message in report.errors:
        echo(f"error    {message}")
    if report.guard:
        echo(f"guard    {report.guard}")
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
@click.option("--remote/--no-remote", default=True,
              help="Also ask the remote for its inputs/status counts.")
@log_level_option
def status(config_path: Path | None, as_json: bool, remote: bool, log_level: str | None) -> None:
    """Show counts by state, failures and held files, the last pass and remote counts.

    \b
    Example:
        syncd status --config pets.toml
    """
    from syncd.status import collect_status, render_status

    with _errors_to_exit():
        config = _load(config_path, log_level)
        info = collect_status(config, remote=remote)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(render_status(info))


def _register_emulator() -> None:
    from syncd.emulator.cli import emulator_command

    main.add_command(emulator_command, "emulator")


_register_emulator()
