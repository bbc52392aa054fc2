"""`refsr train`: overfitting, resume equivalence, export, CLI errors (tiny sizes, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch

from refsr.io import write_image, write_jsonl
from refsr.train import TrainOptions, lr_factor, run_training
from refsr.train.data import StepSampler

from test_models import MICRO

FAST = {**MICRO, "train": {"lr": 2e-3, "batch_size": 2, "warmup_steps": 0, "ema_decay": 0.9, "ref_dropout": 0.2,
                           "lpips_weight": 0.0}}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_pairs(root: Path, photos: dict) -> tuple[Path, Path]:
    """A pair manifest (HR 64x48, LR 16x12 by area) and a matches file with two boxes each."""
    pairs, matches = [], []
    for name, img in photos.items():
        hr = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA)
        write_image(root / "hr" / f"{name}.png", hr)
        write_image(root / "lr" / f"{name}.png", cv2.resize(hr, (16, 12), interpolation=cv2.INTER_AREA))
        write_image(root / "refs" / f"{name}.png", cv2.resize(img, (80, 60), interpolation=cv2.INTER_AREA))
        pairs.append({"id": name, "hr": f"hr/{name}.png", "lr": f"lr/{name}.png", "scale": 4, "source": name,
                      "crop": [0, 0, 64, 48], "seed": 0, "degradation": {"kind": "bicubic"}})
        boxes = [[0, 0, 40, 40], [30, 10, 48, 48]]
        matches.append({"id": name, "query": f"hr/{name}.png", "refs": [
            {"path": f"refs/{name}.png", "box": b, "score": 0.5, "image_score": 0.5} for b in boxes]})
    write_jsonl(root / "manifest.jsonl", pairs)
    write_jsonl(root / "matches.jsonl", matches)
    (root / "config.json").write_text(json.dumps(FAST))
    return root / "manifest.jsonl", root / "matches.jsonl"


@pytest.fixture
def pairs(tmp_path, astronaut, coffee):
    return make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})


def _opts(out, steps, **kw):
    base = dict(output=out, steps=steps, batch_size=2, lr=2e-3, device="cpu", checkpoint_every=2, warmup_steps=1,
                validate_every=0, log_every=1, ema_decay=0.9)
    return TrainOptions(**{**base, **kw})


def test_lr_schedule_and_step_sampler():
    assert lr_factor(0, 10, 100, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, 10, 100, "constant") == 1.0
    one = list(StepSampler(0, 3, 4, 1, 0, 1))
    two = sorted(list(StepSampler(0, 3, 2, 1, 0, 2)) + list(StepSampler(0, 3, 2, 1, 1, 2)))
    assert one == two == list(range(12))  # N processes x B covers what one process x N*B does
    assert list(StepSampler(2, 3, 4, 1, 0, 1)) == one[8:]  # resuming skips exactly the done steps


def test_diffusion_overfits_a_fixed_batch(pairs):
    from refsr.train.diffusion import DiffusionStage

    stage = DiffusionStage(pairs[0], config=FAST, kind="ldm", init_from=None)
    module = stage.module()
    batch = torch.utils.data.default_collate([stage.dataset()[i] for i in range(2)])
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(150):
        loss, _ = module(batch, torch.Generator().manual_seed(0))  # same noise and timesteps each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, (losses[:5], losses[-10:])


def test_autoencoder_l1_falls(tmp_path, photo_folder):
    from refsr.train.autoencoder import AutoencoderStage

    stage = AutoencoderStage(photo_folder, config=FAST, lpips=False, patch_size=32)
    module = stage.module()
    batch = torch.utils.data.default_collate([stage.dataset()[i] for i in range(2)])
    opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    l1 = []
    for _ in range(40):
        loss, logs = module(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        l1.append(float(logs["l1"]))
    assert sum(l1[-5:]) / 5 < 0.7 * sum(l1[:3]) / 3


def test_resume_gives_the_same_weights_and_export_loads(tmp_path, pairs):
    from safetensors.torch import load_file

    from refsr.models import RefSRModel
    from refsr.train.diffusion import DiffusionStage

    def stage():
        return DiffusionStage(pairs[0], config=FAST, kind="ldm-ca", matches=pairs[1], seed=3)

    run_training(stage(), _opts(tmp_path / "straight", 4))
    run_training(stage(), _opts(tmp_path / "split", 2))
    with pytest.raises(Exception, match="already holds checkpoints"):
        run_training(stage(), _opts(tmp_path / "split", 4))
    run_training(stage(), _opts(tmp_path / "split", 4, resume=True))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-0000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    metrics = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    model = RefSRModel.from_pretrained(tmp_path / "split" / "model")
    assert model.kind == "ldm-ca" and model.patch_size == 32


def _cli(args):
    from click.testing import CliRunner

    from refsr_cli.main import cli

    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def test_cli_autoencoder_then_diffusion_end_to_end(tmp_path, pairs):
    manifest, matches = pairs
    cfg = manifest.parent / "config.json"
    r = _cli(["train", "autoencoder", manifest.parent / "hr", "--config", cfg, "--steps", 2,
              "--device", "cpu", "--no-lpips", "--validate-every", 2, "-o", tmp_path / "vq"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "vq" / "model" / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "vq" / "validation" / "step-0000002.png").is_file()
    r = _cli(["train", "diffusion", manifest, "--matches", matches, "--vqvae", tmp_path / "vq",
              "--config", cfg, "--steps", 2, "--device", "cpu", "--validate-every", 2, "-o", tmp_path / "ldm"])
    assert r.exit_code == 0, r.output
    assert "trained diffusion for 2 steps" in r.output
    assert (tmp_path / "ldm" / "model" / "model_index.json").is_file()
    assert (tmp_path / "ldm" / "validation" / "step-0000002.png").is_file()


def test_max_minutes_stops_checkpoints_and_exports(tmp_path, pairs):
    """A wall-clock cap ends the run early but cleanly: last checkpoint, export, a marked
    metrics line and a message that says the run was cut (so compared runs can be checked)."""
    manifest, _ = pairs
    cfg = manifest.parent / "config.json"
    r = _cli(["train", "autoencoder", manifest.parent / "hr", "--config", cfg, "--steps", 100000,
              "--max-minutes", 0.0001, "--device", "cpu", "--no-lpips", "-o", tmp_path / "vq"])
    assert r.exit_code == 0, r.output
    metrics = [json.loads(line) for line in (tmp_path / "vq" / "metrics.jsonl").read_text().splitlines()]
    stopped = metrics[-1]
    assert stopped["stopped"] == "max_minutes=0.0001" and stopped["step"] < 100000
    assert (tmp_path / "vq" / "checkpoints" / f"step-{stopped['step']:07d}").is_dir()
    assert (tmp_path / "vq" / "model" / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()
    assert f"for {stopped['step']} steps of 100000 (time cap)" in r.output


def test_cli_one_line_errors(tmp_path, pairs):
    manifest, matches = pairs
    cfg = manifest.parent / "config.json"
    common = ["--steps", 1, "--device", "cpu", "-o", tmp_path / "run"]
    # a manifest naming a missing image
    (manifest.parent / "lr" / "coffee.png").unlink()
    r = _cli(["train", "diffusion", manifest, "--config", cfg, "--init-from", tmp_path, *common])
    assert r.exit_code != 0
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"id": "x"}\n')
    r = _cli(["train", "autoencoder", broken, "--config", cfg, *common])
    assert r.exit_code == 1 and "missing field 'hr'" in r.output and len(r.output.strip().splitlines()) == 1
    # matches whose ids are not pairs
    from refsr.train.data import PairDataset

    other = tmp_path / "m.jsonl"
    write_jsonl(other, [{"id": "zebra", "query": "q", "refs": []}])
    with pytest.raises(Exception, match="match id"):
        PairDataset(make_pairs(tmp_path / "p2", {"a": __import__("numpy").zeros((50, 70, 3), "float32")})[0], 32, 4,
                    matches=other)
    # a config with an unknown key
    bad = dict(FAST, unet={**FAST["unet"], "chanels": 4})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = _cli(["train", "autoencoder", manifest.parent / "hr", "--config", tmp_path / "bad.json", *common])
    assert r.exit_code == 1 and "unknown key 'chanels'" in r.output
    # a VQ of the wrong latent size
    from refsr.models.autoencoder import build_vqvae

    build_vqvae({**FAST["vqvae"], "latent_channels": 4}).save_pretrained(tmp_path / "vq4" / "vqvae")
    p3, m3 = make_pairs(tmp_path / "p3", {"a": __import__("numpy").zeros((50, 70, 3), "float32")})
    r = _cli(["train", "diffusion", p3, "--matches", m3, "--vqvae", tmp_path / "vq4",
              "--config", cfg, *common])
    assert r.exit_code == 1 and "4 latent channels" in r.output and len(r.output.strip().splitlines()) == 1


def test_degrade_on_the_fly_makes_lr_from_hr(pairs):
    pytest.importorskip("refsr.degrade.torch_exec")
    from refsr.train.diffusion import DiffusionStage

    stage = DiffusionStage(pairs[0], config=FAST, kind="ldm", degrade_on_the_fly=True, seed=2)
    items = [stage.dataset()[i] for i in range(2)]
    assert "lr" not in items[0] and items[0]["degrade_key"] == "sample-0"
    batch = torch.utils.data.default_collate(items)
    hr, lr = stage.degrade(batch["hr"], batch["degrade_key"])
    assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32)
    assert lr.min() >= -1 and lr.max() <= 1
    again = stage.degrade(batch["hr"], batch["degrade_key"])[1]
    torch.testing.assert_close(lr, again)  # parameters drawn from (seed, key): reproducible
    loss, _ = stage.module()(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
