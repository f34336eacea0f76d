"""The `syncd` command line (placeholder until the commands land)."""

import click


@click.group()
def main() -> None:
    """Keep a Clarifai application's inputs in step with a dataset folder."""
