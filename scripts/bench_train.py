"""Training cost of ``ldm`` vs ``ldm-ca``: optimizer steps/s and peak memory.

For each config (small, paper) and each variant (ldm; ldm-ca with 1 and 10 references) it
times full optimizer steps of the diffusion stage (frozen VQ encode, U-Net, reference
branch, backward, AdamW) on random inputs at the config's patch size, and prints the cost
ratio ldm-ca / ldm. CUDA when present (bf16 autocast with --bf16), else CPU.

    python scripts/bench_train.py --quick              # < 3 minutes on one H100
    python scripts/bench_train.py --configs small --batch 4 --steps 5 --device cpu
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def bench(config: str, kind: str, refs: int, batch: int, steps: int, device: torch.device, bf16: bool) -> dict:
    from refsr.models import RefSRModel
    from refsr.train.diffusion import DiffusionModule

    torch.manual_seed(0)
    model = RefSRModel.from_config(config, kind=kind)
    module = DiffusionModule(model).to(device).train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    p, s = model.patch_size, model.ref_size
    b = {"hr": torch.rand(batch, 3, p, p, device=device) * 2 - 1,
         "lr": torch.rand(batch, 3, p // model.scale, p // model.scale, device=device) * 2 - 1}
    if kind == "ldm-ca":
        b["refs"] = torch.rand(batch, refs, 3, s, s, device=device) * 2 - 1
        b["ref_mask"] = torch.ones(batch, refs, dtype=torch.bool, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module(b, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    params = sum(x.numel() for x in module.parameters() if x.requires_grad) / 1e6
    del module, opt, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"steps_per_s": steps / dt, "peak_gib": mem, "trainable_m": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["small", "paper"])
    ap.add_argument("--batch", type=int, default=None, help="per-step batch (default: 8 on CUDA, 2 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 10 CUDA, 2 CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--quick", action="store_true", help="few steps, batch 4: a short check on a GPU")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    batch = args.batch or (4 if args.quick else (8 if cuda else 2))
    steps = args.steps or (5 if args.quick else (10 if cuda else 2))
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, batch {batch}, {steps} timed steps, "
          f"bf16={args.bf16}, threads {torch.get_num_threads()}")
    print(f"{'config':8} {'variant':14} {'steps/s':>9} {'peak GiB':>9} {'train M':>8} {'cost x ldm':>10}")
    for config in args.configs:
        base = None
        for kind, refs in (("ldm", 0), ("ldm-ca", 1), ("ldm-ca", 10)):
            r = bench(config, kind, refs, batch, steps, device, args.bf16)
            base = base or r["steps_per_s"]
            label = kind if kind == "ldm" else f"{kind} {refs} ref"
            print(f"{config:8} {label:14} {r['steps_per_s']:9.3f} {r['peak_gib']:9.2f} {r['trainable_m']:8.1f} "
                  f"{base / r['steps_per_s']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
