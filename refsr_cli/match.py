"""`refsr match` (placeholder until its issue lands)."""

import click

from .common import not_implemented


@click.command("match", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def match(args):
    """Not implemented yet: exits with code 2."""
    not_implemented("match")
