"""Benchmark `refsr sample`: seconds per image and peak memory vs input size and number of
references, the share of time in cross-attention per decoder level, and the ratio to
diffusers' LDMSuperResolutionPipeline with the same U-Net, VQ, steps and input. Variant
``ca-shared``: ``ldm-ca`` with the most references, the same for every image (``refsr sample
--refs``), so they are encoded once per run, not per image.

Randomly initialised models (the timing does not depend on the weights). The variants are
run interleaved (one call of each per repetition, after a warm-up), so load drifts on a
shared machine hit them alike; seconds are medians over the repetitions and a ratio is the
median of the per-repetition ratios.

    python scripts/bench_sample.py                 # CPU: `small` config, 32-256 px LR
    python scripts/bench_sample.py --sizes 32,64 --refs 0,10 --repeats 5   # CPU ratio check
    python scripts/bench_sample.py --sizes 64 --refs 0,4,10 --steps 4 --start-strength 0.5   # the shipped recipe
    python scripts/bench_sample.py --sizes 64 --refs 0,10 --repeats 1 --breakdown   # where the time goes
    python scripts/bench_sample.py --sizes 32,64,128 --refs 0,10 --steps 4 --start-strength 0.5 \
        --draws 4 --compare-batch 4 --repeats 5   # the shipped defaults: 4 draws, one U-Net call each or batched
    python scripts/bench_sample.py --quick         # CUDA: `paper` config, 128-512 px, < 3 min on an H100
    python scripts/bench_sample.py --config paper --sizes 128 --refs 0,10 --precision bf16 \
        --sampler dpmpp --steps 20 --repeats 5 --tile 128   # GPU target: 512x512 output, 10 refs
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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device, repeats: int) -> dict:
    """{name: (median seconds, peak bytes, per-repetition seconds)}: one warm-up call of each,
    then ``repeats`` rounds calling every function once, in turn."""
    import statistics

    for fn in fns.values():
        fn()
    times, peaks = {k: [] for k in fns}, {k: 0 for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory(device) as mem:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], mem.peak)
    return {k: (statistics.median(times[k]), peaks[k], times[k]) for k in fns}


def ratio(results: dict, name: str, base: str) -> float:
    """Median over the repetitions of seconds(name) / seconds(base), same repetition."""
    import statistics

    return statistics.median(a / b for a, b in zip(results[name][2], results[base][2]))


def build_models(config: str, device, sampler: str | None = None):
    """An ``ldm`` and an ``ldm-ca`` model sharing VQ and U-Net weights, plus the diffusers
    pipeline on the same VQ, U-Net and schedule (``sampler``'s scheduler, DDIM by default); in
    the memory format `refsr sample` uses on ``device``."""
    from diffusers import DDIMScheduler

    from refsr.sample.samplers import make_scheduler
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import LDMSuperResolutionPipeline

    from refsr.models import RefSRModel

    from refsr.device import prefer_channels_last

    torch.manual_seed(0)  # channels-last on the CPU, as `refsr sample` loads a model (all three share it)
    ca = prefer_channels_last(RefSRModel.from_config(config, kind="ldm-ca").to(device).eval())
    ldm = RefSRModel(ca.vqvae, ca.unet, None, ca.scheduler_config, "ldm", ca.scale, ca.patch_size, ca.ref_size).eval()
    scheduler = make_scheduler(sampler, ca.scheduler_config) if sampler else DDIMScheduler(**ca.scheduler_config)
    pipe = LDMSuperResolutionPipeline(vqvae=ca.vqvae, unet=ca.unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return ldm, ca, pipe


def run_size(size, ldm, ca, pipe, args, device):
    """All variants at one LR size, interleaved; rows of (variant, refs, seconds, peak bytes, ratio, note)."""
    import dataclasses

    from refsr.sample import SampleSettings, restore_tensor
    from refsr.sample.core import encode_references

    settings = SampleSettings(sampler=args.sampler, steps=args.steps, tile=args.tile, tile_overlap=args.tile_overlap,
                              precision=args.precision, batch_size=args.batch_size, start_strength=args.start_strength,
                              draws=args.draws, mirror=args.mirror)
    lr = torch.rand(1, 3, size, size, device=device) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    refs = {r: torch.rand(1, r, 3, ca.ref_size, ca.ref_size, device=device) * 2 - 1 for r in args.refs if r > 0}
    shared = max(args.refs)  # `refsr sample --refs`: the same references for every image, encoded once per run
    ctx = encode_references(ca, torch.rand(1, shared, 3, ca.ref_size, ca.ref_size, device=device) * 2 - 1,
                            settings=settings) if shared > 0 else None

    def variants(s: SampleSettings, tag: str = "") -> dict:
        fns = {(f"ldm{tag}", 0): lambda: restore_tensor(ldm, lr, settings=s, generator=gen(), disable=True)}
        for r in args.refs:
            fns[(f"ldm-ca{tag}", r)] = lambda r=r: restore_tensor(ca, lr, refs.get(r), settings=s, generator=gen(), disable=True)
        if ctx is not None:
            fns[(f"ca-shared{tag}", shared)] = lambda: restore_tensor(ca, lr, settings=s, generator=gen(), disable=True,
                                                                      ref_context=ctx)
        return fns

    fns = {}
    if (size <= args.tile or args.tile == 0) and args.draws == 1:  # the pipeline has no tiling nor draws: untiled only
        def run_pipe():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                pipe(lr, num_inference_steps=args.steps, eta=0.0, generator=gen(), output_type="pt")
        fns[("diffusers", 0)] = run_pipe
    fns.update(variants(settings))
    if args.compare_batch:  # every variant again with --batch-size B: its ratio is to the same variant at --batch-size
        fns.update(variants(dataclasses.replace(settings, batch_size=args.compare_batch), f"@b{args.compare_batch}"))
    res = interleaved(fns, device, args.repeats)
    rows = []
    for (variant, r), (seconds, peak, _) in res.items():
        base = ("diffusers", 0) if variant == "ldm" else ("ldm", 0)
        if "@b" in variant:
            base = (variant.split("@")[0], r)
        x = f"{ratio(res, (variant, r), base):.3f}x {base[0]}" if variant != "diffusers" and base in res else ""
        share = variant == "ldm-ca" and r == max(args.refs) and r > 0
        rows.append((variant, r, seconds, peak, x, _attention_share(ca, fns[(variant, r)]) if share else ""))
    return rows


def breakdown(ca, size: int, n_refs: int, repeats: int = 3) -> None:
    """Where one ``ldm-ca`` image's time goes at LR ``size`` px with ``n_refs`` references:
    each part timed alone (best of ``repeats``), per image or per denoising step."""
    device = next(ca.parameters()).device
    refs = torch.rand(1, n_refs, 3, ca.ref_size, ca.ref_size, device=device) * 2 - 1
    lr = torch.rand(1, 3, size, size, device=device) * 2 - 1
    from refsr.models.ldm import upsample_lr
    from refsr.sample.core import reference_inputs

    lr_up = upsample_lr(lr, ca.scale)

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    with torch.no_grad():
        ref_in = reference_inputs(ca, refs)
        lr_in = ca.branch_input(lr_up)
        x = torch.randn(1, ca.vqvae.config.latent_channels, *lr_in.shape[-2:], device=device)
        t = torch.tensor([500], device=device)
        lr_ctx, ref_ctx = ca.encode_lr(inputs=lr_in), ca.encode_references(inputs=ref_in)
        parts = [
            ("per image: VQ-encode the references (each alone)", lambda: reference_inputs(ca, refs)),
            ("per image: E_Ref + keys/values", lambda: ca.encode_references(inputs=ref_in)),
            ("per image: VQ-encode the upsampled LR", lambda: ca.encode(lr_up)),
            ("per image: E_LR + LR queries", lambda: ca.encode_lr(inputs=lr_in)),
            ("per image: VQ-decode", lambda: ca.decode(x)),
            ("per step: U-Net (ldm)", lambda: ca(x, t, lr)),
            (f"per step: U-Net + cross-attention, {n_refs} refs", lambda: ca(x, t, lr, lr_context=lr_ctx, ref_context=ref_ctx)),
        ]
        print(f"# breakdown at {size} px LR, {n_refs} references of {ca.ref_size} px (best of {repeats})")
        for name, fn in parts:
            print(f"{name:>52}: {best(fn):8.1f} ms")


def _attention_share(ca, fn) -> str:
    """One more call of ``fn`` with timers on the cross-attention levels."""
    timer = AttentionTimer(ca)
    t0 = time.perf_counter()
    fn()
    total = time.perf_counter() - t0
    timer.remove()
    return "xattn " + " ".join(f"L{k}:{100 * v / total:.1f}%" for k, v in sorted(timer.totals.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="model config (default: small on CPU, paper on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default=None, help="LR sizes in px, comma separated")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sampler", default="ddim", help="ddim, dpmpp or ddpm (refsr sample --sampler)")
    parser.add_argument("--refs", default="0,1,10", help="numbers of references for ldm-ca")
    parser.add_argument("--tile", type=int, default=None, help="tile in LR px (default 64 on CPU, 128 on CUDA)")
    parser.add_argument("--tile-overlap", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1, help="refsr sample --batch-size (latents per U-Net call)")
    parser.add_argument("--draws", type=int, default=1, help="refsr sample --draws (the shipped model uses 4)")
    parser.add_argument("--mirror", action="store_true", help="refsr sample --mirror (the shipped model uses it)")
    parser.add_argument("--compare-batch", type=int, default=None,
                        help="also run every variant with this --batch-size (e.g. the --draws), ratio to the same variant")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--start-strength", type=float, default=None,
                        help="refsr sample --start-strength (default 1: from pure noise; the shipped model uses 0.5)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (medians)")
    parser.add_argument("--quick", action="store_true", help="a short run (< 3 min on one H100)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of one ldm-ca image (encoders, decoder, one step) at each size")
    parser.add_argument("--lr-cache-mb", type=float, default=None,
                        help="LR contexts kept across steps, at most (refsr.sample.core.LR_CONTEXT_CACHE_BYTES; 0: "
                             "every tile but the first recomputes E_LR at each step)")
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
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.lr_cache_mb is not None:
        import refsr.sample.core as core

        core.LR_CONTEXT_CACHE_BYTES = int(args.lr_cache_mb * 2**20)

    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(f"# bench_sample: {name} ({device}), torch {torch.__version__}, {os.cpu_count()} CPUs "
          f"({torch.get_num_threads()} threads), config {args.config}, "
          f"steps {args.steps} ({args.sampler}), start strength {args.start_strength or 1:g}, draws {args.draws}{' (two views: --mirror)' if args.mirror else ''}, tile {args.tile}/{args.tile_overlap} LR px, batch {args.batch_size}, "
          f"{args.precision}, {args.repeats} interleaved repetitions (medians)"
          + (f", LR context cache {args.lr_cache_mb:g} MB" if args.lr_cache_mb is not None else ""))
    ldm, ca, pipe = build_models(args.config, device, args.sampler)
    print(f"# ref_size {ca.ref_size}, cross-attention levels {ca.ref_branch.levels}; memory = peak "
          f"{'CUDA allocated' if cuda else 'RSS growth'} during the call")
    print(f"{'LR px':>6} {'variant':>12} {'refs':>4} {'s/img':>8} {'peak MB':>8} {'ratio':>22}  notes")
    for size in sizes:
        for variant, r, seconds, peak, x, note in run_size(size, ldm, ca, pipe, args, device):
            print(f"{size:>6} {variant:>12} {r:>4} {seconds:>8.3f} {peak / 2**20:>8.1f} {x:>22}  {note}", flush=True)
        if args.breakdown:
            breakdown(ca, size, max(args.refs))
    print("# targets: ldm <= 1.05x diffusers; ldm-ca with 10 refs <= 1.3x ldm; peak memory flat once tiled")


if __name__ == "__main__":
    main()
