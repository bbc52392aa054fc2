"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import logging

import click

log = logging.getLogger("refsr")


def _check_device(ctx, param, value):
    from refsr.device import DEVICE_PATTERN

    if value is not None and not DEVICE_PATTERN.match(value.strip().lower()):
        raise click.BadParameter(f"{value!r}; expected auto, cpu, cuda or cuda:N")
    return value


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=_check_device,
    help="Where to compute: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.",
)


def launcher_shard() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when started by ``accelerate launch`` or ``torchrun`` with
    several processes (they set these variables), else None."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def _check_shard(ctx, param, value):
    if value is None:
        return launcher_shard()
    from refsr.io import parse_shard

    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


shard_option = click.option(
    "--shard",
    default=None,
    metavar="K/N",
    callback=_check_shard,
    help="Process only every N-th input starting at K (0-based), e.g. for a SLURM job array "
    "with N tasks: --shard $SLURM_ARRAY_TASK_ID/N. All shards together equal one unsharded run. "
    "Under `accelerate launch`/`torchrun` with N processes, process K takes shard K/N by default.",
)

workers_option = click.option(
    "--workers", type=click.IntRange(min=0), default=None, help="Worker processes (default: all CPU cores)."
)

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (reproducible).")

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Redo outputs that already exist (default: skip them and resume)."
)

skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Skip unreadable inputs and list them at the end instead of stopping."
)


def is_verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("verbose"))


def report(message: str) -> None:
    """Print a result line for the user (stdout), e.g. where outputs were written."""
    click.echo(message)


def warn(message: str) -> None:
    """A warning on stderr (always shown, even with -q)."""
    click.echo(f"warning: {message}", err=True)


def not_implemented(name: str) -> None:
    """Stop a subcommand whose implementation has not landed yet (exit code 2)."""
    click.echo(f"refsr {name}: not implemented yet", err=True)
    raise SystemExit(2)
