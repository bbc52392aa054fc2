"""Benchmark `refsr sample`: seconds per image and peak memory vs input size and number of
references, the share of time in cross-attention per decoder level, and the ratio to
diffusers' LDMSuperResolutionPipeline with the same U-Net, VQ, steps and input.

Randomly initialised models (the timing does not depend on the weights).

    python scripts/bench_sample.py                 # CPU: `small` config, 32-128 px LR
    python scripts/bench_sample.py --quick         # CUDA: `paper` config, 128-512 px, < 3 min on an H100
    python scripts/bench_sample.py --config paper --sizes 128,256,512,1024 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or sampled RSS growth on CPU."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base, self.stop = _rss_bytes(), False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, _rss_bytes() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop = True
            self.thread.join()


class AttentionTimer:
    """Wall time inside each cross-attention level (forward hooks, synchronised on CUDA)."""

    def __init__(self, model):
        self.totals, self.handles, self.device = {}, [], next(model.parameters()).device
        branch = getattr(model, "ref_branch", None)
        for name, module in (branch.attn.items() if branch is not None else []):
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start(self, name):
        def hook(module, args):
            self._sync()
            module._t0 = time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(module, args, out):
            self._sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - module._t0
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def timed(fn, device, repeats: int = 1):
    """(seconds, peak bytes) of fn(), the best of ``repeats`` after one warm-up call."""
    fn()
    best, peak = float("inf"), 0
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, mem.peak)
    return best, peak


def build_models(config: str, device):
    """An ``ldm`` and an ``ldm-ca`` model sharing VQ and U-Net weights, plus the diffusers
    pipeline on the same VQ, U-Net and DDIM schedule."""
    from diffusers import DDIMScheduler
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import LDMSuperResolutionPipeline

    from refsr.models import RefSRModel

    torch.manual_seed(0)
    ca = RefSRModel.from_config(config, kind="ldm-ca").to(device).eval()
    ldm = RefSRModel(ca.vqvae, ca.unet, None, ca.scheduler_config, "ldm", ca.scale, ca.patch_size, ca.ref_size).eval()
    pipe = LDMSuperResolutionPipeline(vqvae=ca.vqvae, unet=ca.unet, scheduler=DDIMScheduler(**ca.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return ldm, ca, pipe


def run_size(size, ldm, ca, pipe, args, device):
    """All variants at one LR size; returns rows of (variant, refs, seconds, peak bytes, note)."""
    from refsr.sample import SampleSettings, restore_tensor

    settings = SampleSettings(steps=args.steps, tile=args.tile, tile_overlap=args.tile_overlap,
                              precision=args.precision, batch_size=args.batch_size)
    lr = torch.rand(1, 3, size, size, device=device) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    rows = []
    if size <= args.tile or args.tile == 0:  # the pipeline has no tiling: compare untiled only
        def run_pipe():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                pipe(lr, num_inference_steps=args.steps, eta=0.0, generator=gen(), output_type="pt")
        rows.append(("diffusers", 0, *timed(run_pipe, device, args.repeats), ""))
    rows.append(("ldm", 0, *timed(lambda: restore_tensor(ldm, lr, settings=settings, generator=gen(), disable=True), device, args.repeats), ""))
    for r in args.refs:
        refs = None if r == 0 else torch.rand(1, r, 3, ca.ref_size, ca.ref_size, device=device) * 2 - 1
        fn = lambda: restore_tensor(ca, lr, refs, settings=settings, generator=gen(), disable=True)  # noqa: E731
        seconds, peak = timed(fn, device, args.repeats)
        note = ""
        if r == max(args.refs) and r > 0:
            timer = AttentionTimer(ca)
            t0 = time.perf_counter()
            fn()
            total = time.perf_counter() - t0
            timer.remove()
            note = "xattn " + " ".join(f"L{k}:{100 * v / total:.1f}%" for k, v in sorted(timer.totals.items()))
        rows.append(("ldm-ca", r, seconds, peak, note))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="model config (default: small on CPU, paper on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default=None, help="LR sizes in px, comma separated")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--refs", default="0,1,10", help="numbers of references for ldm-ca")
    parser.add_argument("--tile", type=int, default=None, help="tile in LR px (default 64 on CPU, 128 on CUDA)")
    parser.add_argument("--tile-overlap", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a short run (< 3 min on one H100)")
    args = parser.parse_args()

    from refsr.device import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.config = args.config or ("paper" if cuda else "small")
    args.tile = args.tile if args.tile is not None else (128 if cuda else 64)
    default_sizes = ("128,256,512" if args.quick else "128,256,512,1024") if cuda else ("32,64,128" if args.quick else "32,64,128,256")
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    args.steps = args.steps or (10 if (args.quick or not cuda) else 20)
    args.refs = [int(r) for r in args.refs.split(",")]
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)

    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"# bench_sample: {name} ({device}), torch {torch.__version__}, {os.cpu_count()} CPUs, config {args.config}, "
          f"steps {args.steps} (DDIM), tile {args.tile}/{args.tile_overlap} LR px, batch {args.batch_size}, {args.precision}")
    ldm, ca, pipe = build_models(args.config, device)
    print(f"# ref_size {ca.ref_size}, cross-attention levels {ca.ref_branch.levels}; memory = peak "
          f"{'CUDA allocated' if cuda else 'RSS growth'} during the call")
    print(f"{'LR px':>6} {'variant':>9} {'refs':>4} {'s/img':>8} {'peak MB':>8} {'ratio':>22}  notes")
    for size in sizes:
        rows = run_size(size, ldm, ca, pipe, args, device)
        base = {v: s for v, r, s, _, _ in rows if r == 0}
        for variant, r, seconds, peak, note in rows:
            if variant == "ldm" and "diffusers" in base:
                ratio = f"{seconds / base['diffusers']:.3f}x diffusers"
            elif variant == "ldm-ca":
                ratio = f"{seconds / base['ldm']:.3f}x ldm"
            else:
                ratio = ""
            print(f"{size:>6} {variant:>9} {r:>4} {seconds:>8.3f} {peak / 2**20:>8.1f} {ratio:>22}  {note}", flush=True)
    print("# targets: ldm <= 1.05x diffusers; ldm-ca with 10 refs <= 1.3x ldm; peak memory flat once tiled")


if __name__ == "__main__":
    main()
