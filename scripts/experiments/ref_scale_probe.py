"""Probe (docs/results.md, run 15): `refsr` with the reference branch's update scaled by W.

Every decoder position with cross-attention adds W x its update instead of the update, as
ControlNet's conditioning scale does for its residuals: W = 1 is the model as trained, W = 0
adds nothing (the model without references, up to float rounding), W > 1 amplifies what the
references change. Not an option of `refsr sample`: on the validation birds the trained
scale was the best one (run 15), so the probe stays a probe.

    python scripts/experiments/ref_scale_probe.py 2 sample --model refsr/weights/default \\
        work/ft/pairs_val/manifest.jsonl --matches work/ft/matches_val.jsonl -o work/rs/w2
"""

from __future__ import annotations

import sys


def scale_reference_updates(w: float) -> None:
    """Patch :meth:`refsr.models.ref_branch.RefBranch.inject` to return ``h + w * update``."""
    from refsr.models import ref_branch

    inject = ref_branch.RefBranch.inject

    def scaled(self, i, h, lr_ctx, ref_ctx):
        return h + w * (inject(self, i, h, lr_ctx, ref_ctx) - h)

    ref_branch.RefBranch.inject = scaled


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} W REFSR_ARGS... (e.g. 2 sample ...)")
    scale_reference_updates(float(sys.argv[1]))
    from refsr_cli.main import main as refsr

    sys.argv = ["refsr", *sys.argv[2:]]
    refsr()


if __name__ == "__main__":
    main()
