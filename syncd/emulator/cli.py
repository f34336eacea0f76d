"""`syncd emulator`: serve the local Clarifai inputs API emulator until stopped."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind; 0 picks a free one.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="An accepted API key (repeatable). Default: one fixed key, printed at start.",
)
@click.option("--user-id", default="demo-user", show_default=True, help="The emulated user.")
@click.option("--app-id", default="demo-app", show_default=True, help="The emulated app.")
@click.option(
    "--processing-delay",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds from POST to 30000/30002 (30003 from half-way).",
)
@click.option(
    "--delete-delay",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a deleted input stays readable.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file keeping the inputs across restarts.",
)
@click.option(
    "--throttle-rps",
    type=click.FloatRange(min=0, min_open=True),
    help="Answer 429 (11005) above this many requests per second per key.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(min=0),
    help="With --throttle-rps: send Retry-After: N on 429s.",
)
def emulator_command(
    *,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    user_id: str,
    app_id: str,
    processing_delay: float,
    delete_delay: float,
    state_path: Path | None,
    throttle_rps: float | None,
    retry_after: int | None,
) -> None:
    """Serve a local emulator of the Clarifai v2 inputs API until stopped.

    The first line printed is `listening on http://HOST:PORT`. The control API (faults,
    stats, store) lives under /_emulator/; see docs/emulator.md.

    \b
    Example:
        syncd emulator --port 0 --processing-delay 0.1 --throttle-rps 15
    """
    try:
        # imported here so that `syncd reconcile` does not pay for the server's imports
        from syncd.emulator.server import serve_forever  # noqa: PLC0415

        serve_forever(
            host=host,
            port=port,
            api_keys=list(api_keys) or None,
            user_id=user_id,
            app_id=app_id,
            processing_delay=processing_delay,
            delete_delay=delete_delay,
            state_path=state_path,
            throttle_rps=throttle_rps,
            retry_after=retry_after,
        )
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from exc
