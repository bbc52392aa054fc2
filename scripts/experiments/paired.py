"""Paired differences of two per-image CSVs of `refsr evaluate --csv` (same images, matched by
name): mean difference B - A per metric, its standard error and on how many images B is better.

    python scripts/experiments/paired.py work/ft/eval/per_image_test_bicubic.csv \
        work/ft/eval/per_image_test_ft.csv
"""

from __future__ import annotations

import argparse
import csv
import math

from refsr.metrics.report import HIGHER_IS_BETTER


def read(path: str) -> dict[str, dict[str, float]]:
    with open(path, newline="") as f:
        return {row["name"]: {k: float(v) for k, v in row.items() if k not in ("name", "pred", "gt") and v}
                for row in csv.DictReader(f)}


def paired(d: list[float], higher_is_better: bool = True) -> tuple[float, float, int]:
    """Of per-image differences B - A: their mean, its standard error and on how many images B is
    better."""
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
    return mean, se, sum((x > 0) if higher_is_better else (x < 0) for x in d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="per-image CSV of the reference method")
    ap.add_argument("b", help="per-image CSV of the method compared with it")
    args = ap.parse_args()
    a, b = read(args.a), read(args.b)
    names = sorted(set(a) & set(b))
    if len(names) != len(a) or len(names) != len(b):
        raise SystemExit(f"paired.py: error: the CSVs share {len(names)} images of {len(a)} and {len(b)}")
    for metric in sorted(set.intersection(*(set(a[n]) & set(b[n]) for n in names))):
        mean, se, better = paired([b[n][metric] - a[n][metric] for n in names], HIGHER_IS_BETTER[metric])
        print(f"{metric}: {mean:+.4f} (SE {se:.4f}), better on {better}/{len(names)}")


if __name__ == "__main__":
    main()
