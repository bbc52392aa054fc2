"""The stage contract every subcommand follows, and the options it shares.

- Inputs are positional; every other value is an option. ``-q``/``-v`` work before or after
  the subcommand (:func:`hoist_global_flags`, called by the ``refsr`` group).
- A list option (:func:`paths_option`, e.g. ``--refs``) takes one value per use: a file, a
  folder or a comma-separated list, and may be repeated. A bare argument right after its
  value is refused rather than taken as an input (:class:`StageCommand`), and a path given
  both as an input and in a list option is an error (:func:`check_disjoint`).
- ``--shard K/N`` splits the inputs; ``--shard auto`` takes the shard that a multi-process
  launcher (``RANK``/``WORLD_SIZE``) gives this process and says so on stderr. Without
  ``--shard`` an inherited ``WORLD_SIZE`` never shards (a warning says it is ignored).
- ``--workers`` defaults to the CPUs this process may use (:func:`refsr.device.available_cpus`).
"""

from __future__ import annotations

import logging

import click

log = logging.getLogger("refsr")

#: flags of the ``refsr`` group that every subcommand also accepts, anywhere
GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def hoist_global_flags(args: list[str], command: click.Command | None) -> list[str]:
    """Move ``-q``/``-v`` found after the subcommand name to before it.

    ``args`` are the group's arguments (``[group flags...] NAME [subcommand args...]``);
    ``command`` is the subcommand, used to leave alone a flag-like token that is the value
    of one of its options (``--suffix -v``; a group's: of its subcommands'). Nothing after
    ``--`` moves.
    """
    name_at = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if name_at is None or command is None:
        return list(args)
    params = [*command.params, *(p for sub in getattr(command, "commands", {}).values() for p in sub.params)]
    takes_value = {name for p in params if isinstance(p, click.Option) and not p.is_flag and not p.count
                   for name in p.opts + p.secondary_opts}
    head, moved, rest = list(args[: name_at + 1]), [], []
    tail = args[name_at + 1:]
    i = 0
    while i < len(tail):
        token = tail[i]
        if token == "--":
            rest += tail[i:]
            break
        if token in takes_value and i + 1 < len(tail):
            rest += tail[i:i + 2]
            i += 2
            continue
        (moved if token in GLOBAL_FLAGS else rest).append(token)
        i += 1
    return head[:name_at] + moved + head[name_at:] + rest


class PathsOption(click.Option):
    """A repeatable option whose value is a file, a folder or a comma-separated list."""


def _split_paths(ctx, param, values):
    from pathlib import Path

    paths = [Path(v.strip()) for value in values for v in str(value).split(",") if v.strip()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise click.BadParameter(f"{', '.join(missing)} does not exist")
    return tuple(paths)


def paths_option(*names: str, help: str):
    """A list option of existing paths: each use gives a file, a folder or a comma-separated
    list (``--refs a.png,b.png --refs more/``); the value is a tuple of ``Path``."""
    return click.option(*names, cls=PathsOption, multiple=True, callback=_split_paths,
                        metavar="PATH[,PATH...]", help=help)


class StageCommand(click.Command):
    """A subcommand of the stage contract: refuses a bare argument right after the value of
    a list option (``--refs r1.png r2.png`` would silently make ``r2.png`` an input), and
    reports a setting the library refuses (:class:`refsr.errors.OptionError`) as a usage
    error of its option: the library is the one place that checks it."""

    def invoke(self, ctx):
        from refsr.errors import OptionError

        try:
            return super().invoke(ctx)
        except OptionError as e:
            raise click.BadParameter(e.reason, ctx=ctx, param_hint=f"'--{e.option.replace('_', '-')}'") from None

    def parse_args(self, ctx, args):
        lists = {name for p in self.params if isinstance(p, PathsOption) for name in p.opts}
        for i, token in enumerate(args):
            if token == "--":
                break
            name, joined, value = token.partition("=")
            if name not in lists or i + (1 if joined else 2) >= len(args):
                continue
            value = value if joined else args[i + 1]
            follower = args[i + (1 if joined else 2)]
            if follower != "--" and not follower.startswith("-"):
                raise click.UsageError(
                    f"{name} takes one value (a file, a folder or a comma-separated list), but {follower!r} "
                    f"follows {value!r}; write {name} {value},{follower} or repeat {name}, and give inputs "
                    "before the options", ctx=ctx)
        return super().parse_args(ctx, args)


def check_disjoint(inputs, others, option: str) -> None:
    """Refuse a file that is both an input and in the list option ``option`` (folders are
    expanded one level, as inputs are)."""
    from pathlib import Path

    def files(paths):
        out = {}
        for p in map(Path, paths):
            found = sorted(p.iterdir()) if p.is_dir() else [p]
            out.update({f.resolve(): f for f in found if f.is_file()})
        return out

    both = files(inputs).keys() & files(others).keys()
    if both:
        raise click.UsageError(f"{files(inputs)[min(both)]} is given both as an input and in {option}")


def set_verbosity(verbose: bool, quiet: bool) -> None:
    """Apply ``-v``/``-q``: refsr's log level, third-party logs, progress bars."""
    from refsr.progress import set_quiet

    set_quiet(quiet)
    # Third-party libraries (open_clip, diffusers, accelerate) log at INFO: keep them to
    # warnings unless -v; refsr's own messages follow -q/-v.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("refsr").setLevel(logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))


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
        if launcher_shard() is not None:
            warn(f"WORLD_SIZE={launcher_shard()[1]} is set but ignored: this process takes every input "
                 "(--shard auto splits them between the launched processes)")
        return None
    if value.strip().lower() == "auto":
        shard = launcher_shard()
        if shard is not None:
            click.echo(f"refsr: --shard auto: RANK {shard[0]} of WORLD_SIZE {shard[1]} takes shard "
                       f"{shard[0]}/{shard[1]}", err=True)
        return shard
    from refsr.io import parse_shard

    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


shard_option = click.option(
    "--shard",
    default=None,
    metavar="K/N|auto",
    callback=_check_shard,
    help="Process only every N-th input starting at K (0-based), e.g. for a SLURM job array "
    "with N tasks: --shard $SLURM_ARRAY_TASK_ID/N. All shards together equal one unsharded run. "
    "auto: under `accelerate launch`/`torchrun` with N processes, process RANK takes shard RANK/N "
    "(said on stderr); a single process takes everything.",
)


def _check_workers(ctx, param, value):
    from refsr.device import available_cpus

    return available_cpus() if value is None else value


workers_option = click.option(
    "--workers", type=click.IntRange(min=0), default=None, callback=_check_workers,
    help="Worker processes (default: the CPUs this process may use: os.sched_getaffinity, "
    "shared among the processes a launcher started on this node).",
)

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (reproducible).")

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Redo outputs that already exist (default: skip them and resume)."
)

skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Skip unreadable inputs and list them at the end instead of stopping."
)


def deprecated_alias(new: str, old: str, value, old_value, param: str, why: str = ""):
    """The value of option ``new`` (parameter ``param``) that may also be given under its
    deprecated name ``old`` (a hidden option with value ``old_value``, None when absent): the
    old name works with a one-line warning; giving both is a usage error."""
    ctx = click.get_current_context()
    if old_value is None:
        return value
    if ctx.get_parameter_source(param).name != "DEFAULT":
        raise click.UsageError(f"give {new} only ({old} is its deprecated name)")
    warn(f"{ctx.info_name} {old} is deprecated; use {new}" + (f" ({why})" if why else ""))
    return old_value


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
