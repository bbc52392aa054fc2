"""`refsr sample` (placeholder until its issue lands)."""

import click

from .common import not_implemented


@click.command("sample", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sample(args):
    """Not implemented yet: exits with code 2."""
    not_implemented("sample")
