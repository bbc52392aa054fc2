"""`refsr degrade` (placeholder until its issue lands)."""

import click

from .common import not_implemented


@click.command("degrade", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def degrade(args):
    """Not implemented yet: exits with code 2."""
    not_implemented("degrade")
