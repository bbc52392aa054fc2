"""`refsr evaluate` (placeholder until its issue lands)."""

import click

from .common import not_implemented


@click.command("evaluate", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args):
    """Not implemented yet: exits with code 2."""
    not_implemented("evaluate")
