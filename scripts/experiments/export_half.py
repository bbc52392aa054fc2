"""Copy a model folder, storing its floating-point weights as float16 (they load as float32):
how the shipped model is stored (`refsr/weights/default`, half the bytes).

    python scripts/experiments/export_half.py RUN/model OUT

OUT must not exist yet, or must be a folder this script wrote before (it holds
model_index.json); it is replaced whole.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    if not (src / "model_index.json").is_file():
        raise SystemExit(f"{src}: not a model folder (no model_index.json)")
    if dst.exists() and not (dst / "model_index.json").is_file():
        raise SystemExit(f"{dst}: exists and is not a model folder; not replacing it")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for f in dst.rglob("*.safetensors"):
        sd = load_file(f)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f)
    print(f"exported {dst}")


if __name__ == "__main__":
    main()
