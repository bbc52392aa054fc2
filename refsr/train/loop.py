"""The training loop shared by every stage (autoencoder, diffusion, and later matcher).

A stage (:class:`Stage`) supplies a dataset indexed by global sample number, a training
module whose ``forward(batch, generator)`` returns ``(loss, logs)``, a validation and an
export. :func:`run_training` does the rest with Accelerate: one device or data-parallel
(``accelerate launch`` / ``torchrun``), gradient accumulation, mixed precision, clipping,
warmup + cosine/constant learning rate counted in optimizer steps, EMA weights,
checkpoints every N steps keeping the last K, resume, ``metrics.jsonl`` and validation
images. Only the main process writes files.

Run folder::

    RUN/run.json            options of the run (written once)
    RUN/metrics.jsonl       one line per log interval
    RUN/checkpoints/step-NNNNNNN/  model.safetensors, ema.safetensors,
                                   optimizer.safetensors + optimizer.json, state.json
    RUN/validation/step-NNNNNNN.png
    RUN/model/              the export (EMA weights)

Checkpoints are safetensors + JSON (no pickle), so resume never unpickles. All randomness
of a step (data, noise, timesteps) derives from ``(seed, step, micro-batch, rank)``, so a
resumed run continues exactly as a straight one would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..constants import LR_SCHEDULES, MIXED_PRECISION
from ..errors import InputError, OutputError
from ..io import replace_dir, temp_dir_beside, write_json
from ..progress import is_quiet, progress
from ..seeding import torch_generator_for

log = logging.getLogger("refsr.train")

CHECKPOINT_FORMAT = "refsr.checkpoint/1"
RUN_FORMAT = "refsr.train/1"


@dataclass
class TrainOptions:
    """Options common to every stage (the ``refsr train`` flags)."""

    output: Path
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    mixed_precision: str = "no"
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    validate_every: int = 500
    log_every: int = 10
    workers: int = 0
    max_minutes: float = 0.0  # stop (checkpoint, export) after this wall-clock time; 0 = no cap
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch size and accumulation must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed precision {self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")


class Stage:
    """What a training stage provides to :func:`run_training` (subclass it)."""

    name = "stage"
    find_unused_parameters = False

    def dataset(self) -> torch.utils.data.Dataset:
        """Items indexed by global sample number (see ``refsr.train.data``)."""
        raise NotImplementedError

    def module(self) -> nn.Module:
        """The training module: ``forward(batch, generator) -> (loss, {name: float tensor})``."""
        raise NotImplementedError

    def validate(self, module: nn.Module, batch: dict, path: Path) -> None:
        """Write a validation image for ``batch`` to ``path`` (main process only)."""

    def evaluate(self, module: nn.Module) -> dict | None:
        """Held-out metrics (main process only; None = this stage has none). Logged to
        ``metrics.jsonl`` at every validation and, with the EMA weights before the export,
        written to ``RUN/eval.json``."""
        return None

    def export(self, module: nn.Module, folder: Path) -> None:
        """Write the final artefact (module holds the EMA weights)."""
        raise NotImplementedError


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warmup, then cosine to 0
    or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress_ = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress_, 0.0), 1.0)))


class EMA:
    """Exponential moving average of parameters, kept in float32.

    ``decay`` is warmed up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far).
    """

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the EMA weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp.float())


# ---------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON
# ---------------------------------------------------------------------------------------


def checkpoint_dirs(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run) / "checkpoints"
    dirs = [d for d in root.glob("step-*") if (d / "state.json").is_file()] if root.is_dir() else []
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def save_checkpoint(folder: Path, module: nn.Module, optimizer, ema: EMA, step: int, keep: int) -> Path:
    """Write checkpoint ``step`` (a temp folder renamed into place); keep the last ``keep``."""
    from safetensors.torch import save_file

    final = folder / f"step-{step:07d}"
    for stale in folder.glob(f".{final.name}.*tmp"):  # left by a killed run (this run's own temp folders)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_dir_beside(final)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        save_file({str(i): s.contiguous().cpu() for i, s in enumerate(ema.shadow)}, str(tmp / "ema.safetensors"))
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "state.json", {"format": CHECKPOINT_FORMAT, "step": step, "ema_updates": ema.updates})
        replace_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no partial .step-N.tmp/
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{final}: cannot write the checkpoint ({e.strerror or e})") from None
        raise
    for old in checkpoint_dirs(folder.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, module: nn.Module, optimizer, ema: EMA) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; return its step.

    Raises:
        InputError: a damaged checkpoint (unreadable safetensors or JSON, missing or
            mismatched tensors), naming the folder and the file.
    """
    from safetensors.torch import load_file

    name = "state.json"
    try:
        state = json.loads((folder / name).read_text())
        step, updates = int(state["step"]), int(state["ema_updates"])
        name = "model.safetensors"
        model = load_file(str(folder / name))
        name = "ema.safetensors"
        shadow = load_file(str(folder / name))
        shadow = [shadow[str(i)] for i in range(len(ema.shadow))]
        name = "optimizer.json"
        meta = json.loads((folder / name).read_text())
        name = "optimizer.safetensors"
        optim = _unflatten_optimizer(load_file(str(folder / name)), meta)
        name = "model.safetensors"
        module.load_state_dict(model)
        name = "ema.safetensors"
        for s, t in zip(ema.shadow, shadow, strict=True):
            s.copy_(t)
        name = "optimizer.safetensors"
        optimizer.load_state_dict(optim)
    except Exception as e:  # SafetensorError, JSONDecodeError, KeyError, a shape mismatch ...
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise InputError(f"{folder / name}: damaged checkpoint file ({type(e).__name__}: {reason})") from None
    ema.updates = updates
    return step


def resume_from(run: Path, module: nn.Module, optimizer, ema: EMA) -> int:
    """Load the newest checkpoint of ``run`` that is readable, falling back to older ones
    (each damaged one is named in a warning); return its step, 0 without checkpoints.

    Raises:
        InputError: every checkpoint is damaged (the newest one's file and reason).
    """
    errors = []
    for folder in reversed(checkpoint_dirs(run)):
        try:
            return load_checkpoint(folder, module, optimizer, ema)
        except InputError as e:
            log.warning("%s; resuming from the previous checkpoint", e)
            errors.append(e)
    if errors:
        raise InputError(f"{run}: no readable checkpoint to resume from (newest: {errors[0]})")
    return 0


def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _run_record(run: Path) -> dict | None:
    """``RUN/run.json`` when it was written by ``refsr train`` (any version), else None."""
    try:
        rec = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format", RUN_FORMAT) != RUN_FORMAT or "stage" not in rec:
        return None
    return rec


def _remove_run_outputs(run: Path) -> None:
    """What a run makes, and nothing else: ``checkpoints/step-*``, ``validation/step-*.png``
    (each folder too once empty), ``model/``, ``metrics.jsonl``, ``split.json``, ``eval.json``."""
    for pattern in ("checkpoints/step-*", "checkpoints/.step-*.tmp", "model"):
        for d in run.glob(pattern):
            shutil.rmtree(d, ignore_errors=True)
    for pattern in ("validation/step-*.png", "metrics.jsonl", "split.json", "eval.json"):
        for f in run.glob(pattern):
            f.unlink(missing_ok=True)
    for d in ("checkpoints", "validation"):
        with contextlib.suppress(OSError):
            (run / d).rmdir()  # only when empty


def claim_run_folder(run: Path, resume: bool, overwrite: bool, stage: str | None = None) -> None:
    """Make sure ``run`` is this run's to write into, before anything is written (main process).

    ``run`` must be new, empty, or a ``refsr train`` run folder (its ``run.json``); a
    finished or started run (checkpoints or ``model/``) is continued only with ``resume``
    (from a checkpoint of the same stage) or started again with ``overwrite``, which deletes
    only what a run makes (:func:`_remove_run_outputs`). Leaves a ``run.json`` behind, so
    the folder is the run's from then on.

    Raises:
        InputError: one line naming the folder and what to do.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise InputError(f"{run}: exists and is not a folder; give a new or empty folder for the run")
    record = _run_record(run) if run.is_dir() else None
    if run.is_dir() and record is None and any(run.iterdir()):
        raise InputError(f"{run}: not empty and not a refsr train run (no run.json of `refsr train`); "
                         "give a new or empty folder (nothing in it was changed)")
    existing, model = checkpoint_dirs(run), (run / "model").exists()
    if resume and existing and stage and record and record.get("stage") not in (None, stage):
        raise InputError(f"{run}: is a {record['stage']} run; cannot resume it as stage {stage}")
    if not resume and not overwrite and (existing or model):
        what = f"checkpoints (last {existing[-1].name})" if existing else "an exported model/ (finished run)"
        raise InputError(f"{run}: already holds {what}; pass --resume to continue it or --overwrite to start again")
    if resume and not existing and model:
        raise InputError(f"{run}: has no checkpoint to resume from, and starting again would replace its "
                         "exported model/; pass --overwrite to start again")
    if overwrite and not resume:
        _remove_run_outputs(run)
    if record is None:
        write_json(run / "run.json", {"format": RUN_FORMAT, "stage": stage})


def _prepare_run(run: Path, opts: TrainOptions, main: bool, stage: str | None = None) -> list[dict]:
    """Claim the run folder (main process); return the metrics lines kept on --resume."""
    if main:
        claim_run_folder(run, opts.resume, opts.overwrite, stage)
    metrics = run / "metrics.jsonl"
    if opts.resume and metrics.is_file():
        return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return []


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _validation_batch(dataset, size: int) -> dict:
    """A fixed batch (sample numbers far beyond any training step) for validation images."""
    items = [dataset[10**12 + j] for j in range(size)]
    return torch.utils.data.default_collate(items)


def make_accelerator(opts: TrainOptions, find_unused: bool):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from ..device import resolve_device

    cpu = resolve_device(opts.device).type == "cpu"
    return Accelerator(mixed_precision=opts.mixed_precision, gradient_accumulation_steps=opts.grad_accum, cpu=cpu,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])


def run_training(stage: Stage, opts: TrainOptions) -> Path:
    """Train ``stage`` with the options; return the exported model folder (RUN/model).

    Steps: 1. Accelerator and run folder; 2. module, optimizer, EMA (same seed on every
    process); 3. resume from the latest checkpoint; 4. optimizer steps from the step
    sampler, with accumulation, clipping and the LR schedule; 5. logs, checkpoints and
    validation on the main process; 6. export with the EMA weights.
    """
    opts.check()
    run = Path(opts.output)
    accelerator = make_accelerator(opts, stage.find_unused_parameters)
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    metrics = _prepare_run(run, opts, main, stage.name)
    accelerator.wait_for_everyone()
    torch.manual_seed(opts.seed)
    dataset = stage.dataset()
    module = stage.module()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    module, optimizer = accelerator.prepare(module, optimizer)
    inner = accelerator.unwrap_model(module)
    ema = EMA(params, opts.ema_decay)
    start = 0
    if opts.resume and checkpoint_dirs(run):
        start = resume_from(run, inner, optimizer.optimizer, ema)
        log.info("resumed %s from step %d", run, start)
    metrics = [m for m in metrics if m.get("step", 0) <= start]
    global_batch = opts.batch_size * world * opts.grad_accum
    (log.info if main else log.debug)("stage %s: %d optimizer steps, global batch %d = %d per device x %d process(es) x %d accumulation",
             stage.name, opts.steps, global_batch, opts.batch_size, world, opts.grad_accum)
    if main:
        write_json(run / "run.json", {"format": RUN_FORMAT, "stage": stage.name, "global_batch": global_batch, "processes": world,
                                      **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}})
    val_batch = _validation_batch(dataset, min(4, opts.batch_size)) if main else None
    _loop(stage, opts, accelerator, module, optimizer, params, ema, dataset, start, metrics, val_batch, global_batch)
    accelerator.wait_for_everyone()
    out = run / "model"
    if main:
        ema.swap()
        final = _evaluate(stage, inner)
        stage.export(inner, out)
        ema.swap()
        log.info("exported %s (EMA weights)", out)
        if final is not None:
            step = int(checkpoint_dirs(run)[-1].name.split("-")[1]) if checkpoint_dirs(run) else opts.steps
            write_json(run / "eval.json", {"stage": stage.name, "step": step, "weights": "ema", **final})
            log.info("held-out evaluation (EMA weights): %s", json.dumps(final))
    accelerator.wait_for_everyone()
    return out


def _loop(stage, opts, accelerator, module, optimizer, params, ema, dataset, start, metrics, val_batch, global_batch):
    from torch.utils.data import DataLoader

    from ..io import write_jsonl
    from .data import StepSampler

    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    run, device = Path(opts.output), accelerator.device
    sampler = StepSampler(start, opts.steps, opts.batch_size, opts.grad_accum, rank, world)
    loader = DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler, num_workers=opts.workers)
    bar = progress(total=opts.steps, initial=start, desc=f"train {stage.name}", disable=(not main) or is_quiet())
    step, micro, sums, count, t0, last = start, 0, {}, 0, time.time(), start
    deadline = time.time() + 60.0 * opts.max_minutes if opts.max_minutes > 0 else None
    module.train()
    for batch in loader:
        gen = torch_generator_for(opts.seed, "step", step, micro, rank, device=device)
        with accelerator.accumulate(module):
            loss, logs = module({**_to_device(batch, device), "step": step}, gen)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if opts.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, opts.grad_clip)
                for group in optimizer.param_groups:
                    group["lr"] = opts.lr * lr_factor(step, opts.warmup_steps, opts.steps, opts.lr_schedule)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for k, v in {"loss": loss, **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        micro = (micro + 1) % opts.grad_accum
        if micro:
            continue
        step += 1
        ema.update()
        bar.update(1)
        if step % opts.log_every == 0 or step == opts.steps:
            names = sorted(sums)
            vals = accelerator.reduce(torch.tensor([sums[k] / count for k in names], device=device), "mean")
            dt = time.time() - t0
            rec = {"step": step, **{k: round(float(v), 6) for k, v in zip(names, vals)},
                   "lr": optimizer.param_groups[0]["lr"], "steps_per_s": round((step - last) / dt, 4),
                   "images_per_s": round((step - last) * global_batch / dt, 3),
                   "peak_mem_mb": round(_peak_memory_mb(device), 1)}
            if main:
                metrics.append(rec)
                write_jsonl(run / "metrics.jsonl", metrics)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            sums, count, t0, last = {}, 0, time.time(), step
        out_of_time = deadline is not None and _any_rank(accelerator, time.time() > deadline)
        if out_of_time and main:
            log.info("time cap of %g minutes reached at step %d of %d: stopping", opts.max_minutes, step, opts.steps)
            metrics.append({"step": step, "stopped": f"max_minutes={opts.max_minutes}"})
            write_jsonl(run / "metrics.jsonl", metrics)
        if step % opts.checkpoint_every == 0 or step == opts.steps or out_of_time:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(run / "checkpoints", accelerator.unwrap_model(module), optimizer.optimizer, ema, step,
                                opts.keep_checkpoints)
        if main and opts.validate_every > 0 and (step % opts.validate_every == 0 or step == opts.steps):
            _validate(stage, accelerator.unwrap_model(module), val_batch, run / "validation" / f"step-{step:07d}.png", device)
            held_out = _evaluate(stage, accelerator.unwrap_model(module))
            if held_out is not None:
                metrics.append({"step": step, "eval": held_out})
                write_jsonl(run / "metrics.jsonl", metrics)
        if out_of_time:
            break
    bar.close()


def _any_rank(accelerator, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, "max").item() > 0)


def _validate(stage, module, batch, path, device) -> None:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        stage.validate(module, _to_device(batch, device), path)
    module.train(was_training)


def _evaluate(stage, module) -> dict | None:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        result = stage.evaluate(module)
    module.train(was_training)
    return result


def save_grid(columns: list[torch.Tensor], path: Path) -> None:
    """Write a PNG with one row per image and one column per tensor of ``columns``
    (each (B, 3, H, W) in [-1, 1]; resized to the first one's size)."""
    import numpy as np
    import torch.nn.functional as F

    from ..io import write_image

    h, w = columns[0].shape[-2:]
    cols = [F.interpolate(c.float(), size=(h, w), mode="nearest") if c.shape[-2:] != (h, w) else c.float() for c in columns]
    rows = [torch.cat([c[i] for c in cols], dim=2) for i in range(cols[0].shape[0])]
    grid = torch.cat(rows, dim=1).clamp(-1, 1).add(1).mul(0.5).permute(1, 2, 0).cpu().numpy()
    write_image(path, np.ascontiguousarray(grid, dtype=np.float32))
