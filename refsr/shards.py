"""The shard protocol every sharded stage follows (``degrade``, ``index-refs``, ``match``, ``sample``).

- Shard K of N (``--shard K/N``) processes every N-th input from K (:func:`refsr.io.select_shard`)
  and writes only its own *part*: ``NAME.shard-K-of-N.EXT`` beside the final file ``NAME.EXT``
  (:func:`part_path`); ``index-refs`` keeps ``DIR/parts/part-K-of-N.npz``, ``sample`` a hidden
  run log per run (``OUT/.run-*.jsonl``).
- A shard that finds every part of its N complete merges them into the final file; so does
  ``refsr STAGE --merge``. A merge is a pure function of the parts, written atomically, so two
  shards finishing at once both write the same bytes: no file lock is needed (advisory locks do
  not serialise across the nodes of a cluster file system mounted with ``localflock``).
- Parts are kept: a rerun of one shard resumes from its part, and a second merge is harmless.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

from .errors import InputError


def part_path(final: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """``dir/NAME.EXT`` -> ``dir/NAME.shard-K-of-N.EXT`` for shard K/N; ``final`` itself for 0/1."""
    final, (k, n) = Path(final), shard
    return final if n == 1 else final.with_name(f"{final.stem}.shard-{k}-of-{n}{final.suffix}")


def find_parts(final: str | os.PathLike, n: int | None = None) -> dict[int, Path]:
    """The parts ``{K: path}`` of ``final`` for one N (``n``, or the one N whose parts exist).

    Raises:
        InputError: no parts, parts of several N (when ``n`` is None), or a missing part (named).
    """
    final = Path(final)
    pattern = re.compile(re.escape(final.stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(final.suffix))
    found: dict[tuple[int, int], Path] = {}
    for p in final.parent.glob(f"{final.stem}.shard-*-of-*{final.suffix}"):
        m = pattern.fullmatch(p.name)
        if m and int(m[1]) < int(m[2]):
            found[(int(m[1]), int(m[2]))] = p
    ns = {key[1] for key in found} if n is None else {n}
    if len(ns) != 1:
        raise InputError(f"{final}: cannot merge, expected the parts {final.stem}.shard-K-of-N{final.suffix} of one N, "
                         f"found N = {', '.join(map(str, sorted(ns))) or 'none'}")
    n = ns.pop()
    missing = [part_path(final, (k, n)).name for k in range(n) if (k, n) not in found]
    if missing:
        raise InputError(f"{final}: cannot merge, missing {', '.join(missing)}")
    return {k: found[(k, n)] for k in range(n)}


def all_parts_done(final: str | os.PathLike, n: int) -> bool:
    """True when every part K/N of ``final`` exists (a part is written atomically, so it exists
    only once complete)."""
    return all(part_path(final, (k, n)).is_file() for k in range(n))


def interleave(parts: Sequence[Sequence]) -> list:
    """The inverse of :func:`refsr.io.select_shard`: ``parts[k]`` are the items ``k::N`` of a
    list; returns that list.

    Raises:
        ValueError: part lengths that no list split K/N gives.
    """
    n, total = len(parts), sum(map(len, parts))
    items: list = [None] * total
    for k, part in enumerate(parts):
        if len(part) != len(range(k, total, n)):
            raise ValueError(f"part {k} of {n} has {len(part)} items; a split of {total} items gives it "
                             f"{len(range(k, total, n))}")
        items[k::n] = part
    return items


def merge_jsonl(final: str | os.PathLike, n: int | None = None, key: Callable[[dict], object] | None = None,
                check: Callable[[list[list[dict]]], None] | None = None) -> Path:
    """Merge the JSON Lines parts of ``final`` into ``final`` (atomically): in the order of an
    unsharded run, by ``key`` when given (for parts that may lack records, e.g. skipped bad
    inputs), else by :func:`interleave`. ``check(parts)`` may refuse parts that do not belong
    together (raising InputError).

    Raises:
        InputError: missing parts (see :func:`find_parts`), or parts that do not fit together.
    """
    from .io import read_jsonl, write_jsonl

    final = Path(final)
    parts = [read_jsonl(p) for _, p in sorted(find_parts(final, n).items())]
    if check is not None:
        check(parts)
    if key is not None:
        records = sorted((r for part in parts for r in part), key=key)
    else:
        try:
            records = interleave(parts)
        except ValueError as e:
            raise InputError(f"{final}: cannot merge, {e} (parts of different runs?)") from None
    write_jsonl(final, records)
    return final


def finish_shard(final: str | os.PathLike, shard: tuple[int, int], merge: Callable[[Path, int], Path]) -> bool:
    """After shard K/N wrote its part: merge (``merge(final, N)``) if every part is there.
    Returns whether it merged (always False for an unsharded run, which writes ``final`` itself)."""
    if shard[1] == 1 or not all_parts_done(final, shard[1]):
        return False
    merge(Path(final), shard[1])
    return True
