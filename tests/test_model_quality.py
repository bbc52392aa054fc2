"""Issue 13's pieces: held-out autoencoder evaluation, latent scale, prediction types,
min-SNR weighting, --start-strength, and the one reference-fragment function (tiny, CPU)."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from refsr.errors import InputError
from refsr.io import read_image, read_json, write_image, write_jsonl
from refsr.models import RefSRModel
from refsr.models.autoencoder import LATENT_FILE, LatentSpec, latent_statistics, read_latent_spec
from refsr.train import TrainOptions, run_training
from refsr.train.autoencoder import AutoencoderStage, centre_crop, reconstruction_metrics
from refsr.train.diffusion import DiffusionModule, DiffusionStage, diffusion_target, min_snr_weight
from refsr_cli.main import cli

from test_models import MICRO, as_old_layout

pytestmark = pytest.mark.usefixtures("one_thread")

AE_CONFIG = {**MICRO, "train": {"lr": 2e-3, "batch_size": 2, "warmup_steps": 0, "ema_decay": 0.9, "lpips_weight": 0.0}}


def _photos(folder, astronaut, coffee, motorcycle_pair, size=(48, 40)):
    photos = {"astronaut": astronaut, "coffee": coffee, "left": motorcycle_pair[0], "right": motorcycle_pair[1]}
    for name, img in photos.items():
        write_image(folder / f"{name}.png", cv2.resize(img, size, interpolation=cv2.INTER_AREA))
    return folder


def _ae_opts(out, steps=3):
    return TrainOptions(output=out, steps=steps, batch_size=2, lr=2e-3, device="cpu", checkpoint_every=10,
                        warmup_steps=0, validate_every=0, log_every=1, ema_decay=0.9)


# ---------------------------------------------------------------------------------------
# Autoencoder: held-out evaluation and latent settings
# ---------------------------------------------------------------------------------------


@pytest.fixture
def ae_run(tmp_path, astronaut, coffee, motorcycle_pair):
    photos = _photos(tmp_path / "photos", astronaut, coffee, motorcycle_pair)
    stage = AutoencoderStage(photos, config=AE_CONFIG, lpips=False, val=None, holdout=0.5)
    model = run_training(stage, _ae_opts(tmp_path / "vq"))
    return stage, tmp_path / "vq", model


def test_autoencoder_eval_json_is_the_exported_models_held_out_reconstruction(ae_run):
    from diffusers import VQModel

    stage, run, model = ae_run
    held = {p.name for p in stage.held_out}
    assert held and not held & {p.name for p in stage.data.paths}  # held out by image
    ev = read_json(run / "eval.json")
    assert ev["images"] == len(held) and ev["border"] == 4 and ev["color"] == "y" and ev["weights"] == "ema"
    vq = VQModel.from_pretrained(model / "vqvae").eval()
    from refsr.io import read_rgb

    again = reconstruction_metrics(vq, [centre_crop(read_rgb(p), 256, 4) for p in stage.held_out])
    for kind in ("quantized", "continuous"):
        assert ev[kind]["psnr"] == pytest.approx(again[kind]["psnr"], abs=1e-3)
        assert ev[kind]["ssim"] == pytest.approx(again[kind]["ssim"], abs=1e-4)


def test_reconstruction_metrics_are_the_evaluate_conventions(astronaut):
    """An 'autoencoder' that returns its input scores inf dB / SSIM 1; the values agree
    with refsr.metrics on a perturbed reconstruction."""
    from refsr.metrics.fidelity import psnr_ssim

    class Shift(torch.nn.Module):  # decode(encode(x)) = x + 0.05 (clamped), quantised or not
        def encode(self, x):
            return type("E", (), {"latents": x})()

        def decode(self, h, force_not_quantize=False):
            return type("D", (), {"sample": h + (0.1 if force_not_quantize else 0.0)})()

    img = centre_crop(cv2.resize(astronaut, (70, 66), interpolation=cv2.INTER_AREA), 256, 4)
    assert img.shape == (64, 64, 3)
    res = reconstruction_metrics(Shift(), [img])
    assert res["quantized"]["psnr"] == float("inf") and res["quantized"]["ssim"] == pytest.approx(1.0)
    gt = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    p, s = psnr_ssim((gt + 0.05).clamp(0, 1), gt, border=4, color="y")
    assert res["continuous"]["psnr"] == pytest.approx(float(p[0]), abs=1e-3)
    assert res["continuous"]["ssim"] == pytest.approx(float(s[0]), abs=1e-4)


def test_latent_scale_gives_unit_variance_latents_to_the_denoiser(ae_run):
    stage, run, model = ae_run
    spec = read_latent_spec(model / "vqvae")
    assert spec is not None and spec.scale == pytest.approx(1.0 / spec.stats["std"], rel=1e-4)
    diffusion = RefSRModel.from_config(MICRO, kind="ldm")
    from refsr.train.diffusion import build_model

    built = build_model(MICRO, "ldm", vqvae_dir=run)
    assert built.latent.scale == spec.scale and built.latent.decode_quantized == spec.decode_quantized
    crops = torch.stack([stage.data[2 * 10**12 + j]["hr"] for j in range(64)])
    with torch.no_grad():
        z = built.encode(crops)
    assert float(z.std()) == pytest.approx(1.0, abs=0.02)  # the same crops the scale was measured on
    assert diffusion.latent.scale == 1.0


def test_decode_inverts_the_latent_scale_and_folders_keep_the_settings(tmp_path):
    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca").eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        raw = model.encode(x)
        plain = model.decode(raw)
        model.latent = LatentSpec(scale=2.5, decode_quantized=False)
        scaled = model.encode(x)
        assert torch.allclose(scaled, 2.5 * raw)
        continuous = model.decode(scaled)
        assert torch.allclose(continuous, model.vqvae.decode(raw, force_not_quantize=True).sample.clamp(-1, 1), atol=1e-5)
        assert not torch.allclose(continuous, plain)  # the quantiser was skipped
    model.scheduler_config["prediction_type"] = "v_prediction"
    model.recipe = {"min_snr_gamma": 5.0}
    model.save_pretrained(tmp_path / "m")
    back = RefSRModel.from_pretrained(tmp_path / "m")
    assert (back.latent.scale, back.latent.decode_quantized) == (2.5, False)
    assert back.prediction_type == "v_prediction" and back.recipe == {"min_snr_gamma": 5.0}


def test_folder_without_latent_scale_loads_with_scale_1_and_says_so_once(tmp_path, caplog):
    torch.manual_seed(0)
    RefSRModel.from_config(MICRO, kind="ldm").save_pretrained(tmp_path / "old")
    as_old_layout(tmp_path / "old", drop=("latent_scale", "decode_quantized"))
    with caplog.at_level(logging.INFO, logger="refsr.models"):
        a = RefSRModel.from_pretrained(tmp_path / "old")
        b = RefSRModel.from_pretrained(tmp_path / "old")
    assert a.latent.scale == b.latent.scale == 1.0 and a.latent.decode_quantized
    said = [r for r in caplog.records if "no latent scale recorded" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "old") in said[0].getMessage()


def test_bad_latent_file_is_one_line(tmp_path):
    (tmp_path / LATENT_FILE).write_text(json.dumps({"format": "refsr.latent/1", "scale": -1}))
    with pytest.raises(InputError, match="latent scale must be > 0"):
        read_latent_spec(tmp_path)


def test_latent_statistics_pool_all_channels():
    class Identity:
        def encode(self, x):
            return type("E", (), {"latents": x})()

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 3, 8, 8, generator=g) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) for _ in range(3)]
    stats = latent_statistics(Identity(), data)
    everything = torch.cat(data)
    assert stats["std"] == pytest.approx(float(everything.double().std(unbiased=False)), rel=1e-6)
    assert stats["channel_std"] == pytest.approx([float(everything[:, c].std(unbiased=False)) for c in range(3)], rel=1e-4)


# ---------------------------------------------------------------------------------------
# Denoiser: prediction type, min-SNR weighting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_exact_target_lets_the_scheduler_recover_z0(kind):
    """The training target is what diffusers' schedulers expect for the prediction type."""
    from diffusers import DDIMScheduler

    from refsr.models.ldm import SCHEDULER_CONFIG

    sched = DDIMScheduler(**{**{k: v for k, v in SCHEDULER_CONFIG.items()}, "prediction_type": kind})
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = sched.timesteps[10]
    a = sched.alphas_cumprod[t].view(1, 1, 1, 1)
    noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
    out = sched.step(diffusion_target(kind, z0, noise, a), t, noisy)
    assert torch.allclose(out.pred_original_sample, z0, atol=1e-4)


def test_min_snr_weights():
    a = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99
    snr = a / (1 - a)
    eps = min_snr_weight("epsilon", a, 5.0)
    v = min_snr_weight("v_prediction", a, 5.0)
    assert torch.allclose(eps, torch.tensor([5.0 / 99.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), atol=1e-6)
    assert torch.equal(min_snr_weight("epsilon", a, 0.0), torch.ones(3))


def test_v_prediction_and_min_snr_reach_the_loss_and_the_folder(tmp_path, pairs_for_diffusion):
    manifest, matches, vq = pairs_for_diffusion
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", vqvae=vq, prediction_type="v_prediction",
                           min_snr_gamma=5.0)
    module = stage.module()
    batch = torch.utils.data.default_collate([stage.data[i] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    loss, _ = module(batch, g)
    # the same draw by hand: the v target, weighted min(SNR, 5) / (SNR + 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z0 = module.model.encode(batch["hr"])
        t = torch.randint(0, 1000, (2,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = module.alphas_cumprod[t].view(2, 1, 1, 1)
        pred = module.model(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, batch["lr"])
        v = a.sqrt() * noise - (1 - a).sqrt() * z0
        snr = (a / (1 - a)).view(2)
        want = ((pred - v).pow(2).mean(dim=(1, 2, 3)) * snr.clamp(max=5.0) / (snr + 1)).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    run_training(stage, _ae_opts(tmp_path / "ldm", steps=1))
    meta = read_json(tmp_path / "ldm" / "model" / "model_index.json")
    assert meta["recipe"]["min_snr_gamma"] == 5.0
    assert meta["latent_scale"] == read_latent_spec(vq / "model" / "vqvae").scale
    sched = read_json(tmp_path / "ldm" / "model" / "scheduler" / "scheduler_config.json")
    assert sched["prediction_type"] == "v_prediction"


def test_max_strength_trains_only_the_timesteps_sampling_starts_from(tmp_path, pairs_for_diffusion, monkeypatch):
    """--max-strength S: every training timestep is below S x T, the folder records S (and a
    recommended start strength no larger), and the validation sample starts from S too."""
    from refsr.train import diffusion as diffusion_mod

    manifest, matches, vq = pairs_for_diffusion
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", vqvae=vq, max_strength=0.3)
    module = stage.module()
    assert module.max_timestep == 300 and diffusion_mod.max_timestep(1.0, 1000) == 1000
    seen, forward = [], module.model.forward
    monkeypatch.setattr(module.model, "forward", lambda x, t, *a, **k: seen.append(t.clone()) or forward(x, t, *a, **k))
    batch = torch.utils.data.default_collate([stage.data[i] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        module(batch, g)
    t = torch.cat(seen)
    assert int(t.max()) < 300 and int(t.max()) > 200 and int(t.min()) < 100  # all of [0, 300), nothing above
    starts = []
    monkeypatch.setattr(diffusion_mod, "ddim_sample", lambda *a, **k: starts.append(a[-1]) or batch["hr"])
    stage.validate(module, batch, tmp_path / "grid.png")
    assert starts == [0.3]
    monkeypatch.undo()
    run_training(stage, _ae_opts(tmp_path / "ldm", steps=1))
    recipe = read_json(tmp_path / "ldm" / "model" / "model_index.json")["recipe"]
    assert recipe["max_strength"] == 0.3 and recipe["recommended_start_strength"] == 0.3
    with pytest.raises(ValueError, match="max strength must be in"):
        diffusion_mod.max_timestep(0.0, 1000)


def test_lr_start_samples_are_noised_from_the_lr_latent_and_regressed_onto_the_hr(tmp_path, pairs_for_diffusion):
    """--lr-start-fraction P: that fraction of the samples is noised from the latent of the
    upsampled LR (as `refsr sample --start-strength` starts), in the upper half of the
    timesteps, with the target noise whose DDIM x0 estimate is the HR latent; the rest as
    before. The loss equals the same draws done by hand; the folder records P."""
    from diffusers import DDIMScheduler

    from refsr.models.ldm import upsample_lr
    from refsr.train.diffusion import DiffusionModule, lr_start_noise

    manifest, matches, vq = pairs_for_diffusion
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", vqvae=vq, max_strength=0.5, lr_start_fraction=0.5)
    module = stage.module()
    batch = torch.utils.data.default_collate([stage.data[i % 2] for i in range(8)])
    g = torch.Generator().manual_seed(0)
    loss, _ = module(batch, g)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z0 = module.model.encode(batch["hr"])
        z_lr = module.model.encode(upsample_lr(batch["lr"], module.model.scale))
        t = torch.randint(0, 500, (8,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        from_lr = torch.rand(8, generator=g) < 0.5
        t = torch.where(from_lr, torch.randint(250, 500, (8,), generator=g), t)
        a = module.alphas_cumprod[t].view(8, 1, 1, 1)
        start = torch.where(from_lr.view(8, 1, 1, 1), z_lr, z0)
        noisy = a.sqrt() * start + (1 - a).sqrt() * noise
        target = lr_start_noise(z0, noisy, a)
        pred = module.model(noisy, t, batch["lr"])
        want = (pred - target).pow(2).mean(dim=(1, 2, 3)).mean()
    assert 0 < int(from_lr.sum()) < 8 and bool((t[from_lr] >= 250).all())
    assert not torch.allclose(z_lr, z0, atol=1e-3)  # the two starts differ
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    # an HR-noised sample's target is its noise; an LR-noised one's leads DDIM to the HR latent
    assert torch.allclose(target[~from_lr], noise[~from_lr], atol=1e-4)
    sched = DDIMScheduler(**{k: v for k, v in module.model.scheduler_config.items() if not k.startswith("_")})
    sched.set_timesteps(50)
    for i in torch.nonzero(from_lr).flatten().tolist():
        x0 = sched.step(target[i : i + 1], int(t[i]), noisy[i : i + 1]).pred_original_sample
        assert torch.allclose(x0, z0[i : i + 1], atol=1e-4)
    run_training(stage, _ae_opts(tmp_path / "ldm", steps=1))
    assert read_json(tmp_path / "ldm" / "model" / "model_index.json")["recipe"]["lr_start_fraction"] == 0.5
    with pytest.raises(ValueError, match="lr start fraction must be in"):
        DiffusionModule(module.model, lr_start_fraction=1.5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_predicted_z0_inverts_the_training_target(kind):
    """What the U-Net is trained to predict, read back as an estimate of z0, is z0 itself,
    for every timestep and both prediction types (as diffusers' DDIM step reads it)."""
    from diffusers import DDIMScheduler

    from refsr.train.diffusion import predicted_z0

    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155, prediction_type=kind,
                          clip_sample=False)
    sched.set_timesteps(1000)
    t = torch.tensor([1, 250, 600, 999])
    a = sched.alphas_cumprod[t].float().view(4, 1, 1, 1)
    noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = diffusion_target(kind, z0, noise, a)
    assert torch.allclose(predicted_z0(kind, noisy, pred, a), z0, atol=1e-4)
    for i in range(4):
        x0 = sched.step(pred[i : i + 1], int(t[i]), noisy[i : i + 1]).pred_original_sample
        assert torch.allclose(predicted_z0(kind, noisy[i : i + 1], pred[i : i + 1], a[i : i + 1]), x0, atol=1e-4)
    with pytest.raises(ValueError, match="prediction type 'sample' is not one of"):
        predicted_z0("sample", noisy, pred, a)


def test_luma_difference_is_the_y_that_evaluate_measures():
    """The pixel loss's luma is `refsr evaluate`'s BT.601 Y, on [-1, 1] images (half its 0-255 scale)."""
    from refsr.metrics.fidelity import rgb_to_y
    from refsr.train.diffusion import luma_difference

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 6, 5, generator=g) * 2 - 1, torch.rand(2, 3, 6, 5, generator=g) * 2 - 1
    want = rgb_to_y((a + 1) * 127.5) - rgb_to_y((b + 1) * 127.5)
    assert torch.allclose(luma_difference(a, b) * 127.5, want, atol=1e-4)
    assert float(luma_difference(a, a).abs().max()) == 0.0


def test_pixel_loss_adds_the_luma_mse_of_the_decoded_z0_estimate(tmp_path, pairs_for_diffusion, monkeypatch):
    """--pixel-loss-weight W: the loss gains W x the luma MSE between the HR and the decoder's
    image of the model's z0 estimate; with a perfect prediction that estimate is the HR's own
    latent, so the term is the autoencoder's reconstruction error. Its gradient reaches the U-Net
    (through the frozen decoder, which stays untouched); the folder records W."""
    from refsr.train.diffusion import luma_difference

    manifest, matches, vq = pairs_for_diffusion
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", vqvae=vq, max_strength=0.5, pixel_loss_weight=2.0)
    module = stage.module()
    batch = torch.utils.data.default_collate([stage.data[i % 2] for i in range(4)])
    loss_w, logs = module(batch, torch.Generator().manual_seed(0))
    module.pixel_loss_weight = 0.0
    loss_0, logs_0 = module(batch, torch.Generator().manual_seed(0))
    assert "luma_mse" not in logs_0 and float(logs["luma_mse"]) > 0
    assert float((loss_w - loss_0).detach()) == pytest.approx(2.0 * float(logs["luma_mse"]), rel=1e-5)
    # a perfect prediction: the decoded estimate is the reconstruction of the HR
    module.pixel_loss_weight = 1.0
    model = module.model
    with torch.no_grad():
        z0 = model.encode(batch["hr"])
        recon = model.decode(z0, clamp=False)
        want = float(luma_difference(recon, batch["hr"]).pow(2).mean())
    g = torch.Generator().manual_seed(0)
    torch.randint(0, module.max_timestep, (4,), generator=g)  # the module's timestep draw, then its noise
    noise = torch.randn(z0.shape, generator=g)
    monkeypatch.setattr(model, "forward", lambda *a, **k: noise)  # epsilon: the true noise
    loss, logs = module(batch, torch.Generator().manual_seed(0))
    assert float(logs["luma_mse"]) == pytest.approx(want, rel=1e-4) and float(loss) == pytest.approx(want, rel=1e-4)
    monkeypatch.undo()
    # the gradient of the pixel term reaches the U-Net, and only through it
    def unet_grads(weight):
        module.pixel_loss_weight = weight
        module.zero_grad()
        module(batch, torch.Generator().manual_seed(0))[0].backward()
        return [p.grad.clone() for p in model.unet.parameters() if p.grad is not None]

    grads_w, grads_0 = unet_grads(1.0), unet_grads(0.0)
    assert len(grads_w) == len(grads_0) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(grads_w, grads_0))
    assert all(p.grad is None for p in model.vqvae.parameters())
    run_training(stage, _ae_opts(tmp_path / "ldm", steps=1))
    assert read_json(tmp_path / "ldm" / "model" / "model_index.json")["recipe"]["pixel_loss_weight"] == 2.0
    with pytest.raises(ValueError, match="pixel loss weight must be >= 0"):
        DiffusionModule(module.model, pixel_loss_weight=-1.0)


def test_freeze_unet_trains_only_the_reference_branch(tmp_path, pairs_for_diffusion):
    """--freeze-unet: the exported U-Net (and VQ) are bit for bit those of --init-from, so the
    model without references is unchanged, while the reference branch is trained; recorded as
    recipe.frozen_unet; --ref-dropout defaults to 0. Without a trained ldm-ca U-Net to keep it is a
    usage error."""
    manifest, matches, vq = pairs_for_diffusion
    opts = lambda out, steps: TrainOptions(output=out, steps=steps, batch_size=2, lr=1e-2, device="cpu",  # noqa: E731
                                           checkpoint_every=10, warmup_steps=0, validate_every=0, log_every=1,
                                           ema_decay=0.0)
    base = run_training(DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", vqvae=vq, matches=matches,
                                       ref_dropout=0.0), opts(tmp_path / "base", 2))
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", init_from=base, matches=matches,
                           freeze_unet=True)
    assert stage.data.ref_dropout == 0.0  # its default: a sample without references trains nothing
    assert {n for n, p in stage.module().named_parameters() if p.requires_grad} == {
        "model.ref_branch." + n for n, _ in stage.model.ref_branch.named_parameters()}
    ft = run_training(stage, opts(tmp_path / "ft", 3))
    before, after = RefSRModel.from_pretrained(base), RefSRModel.from_pretrained(ft)
    for part in ("unet", "vqvae"):
        a, b = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    a, b = before.ref_branch.state_dict(), after.ref_branch.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the branch learnt
    assert read_json(ft / "model_index.json")["recipe"]["frozen_unet"] is True
    assert "frozen_unet" not in read_json(base / "model_index.json")["recipe"]
    with pytest.raises(ValueError, match="needs kind ldm-ca and a trained U-Net"):
        DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", vqvae=vq, matches=matches, freeze_unet=True)
    for bad in (["--kind", "ldm", "--init-from", str(base)], ["--vqvae", str(vq)]):
        r = CliRunner().invoke(cli, ["train", "diffusion", str(manifest), "-o", str(tmp_path / "bad"),
                                     "--freeze-unet", *bad])
        assert r.exit_code == 2 and "--freeze-unet" in r.output and "needs kind ldm-ca" in r.output, r.output
        assert not (tmp_path / "bad").exists()


def test_ca_levels_add_positions_to_a_trained_branch_that_start_at_zero(tmp_path, pairs_for_diffusion):
    """--ca-levels with --init-from a trained ldm-ca: the new decoder positions start at zero, so
    the model predicts exactly what it did (bit for bit) and keeps every trained weight; training
    (here with --freeze-unet) then moves the new positions. A branch built from the config takes
    the positions given; dropping a trained position, naming one that does not exist, or giving
    positions to kind ldm (no branch) is a usage error."""
    manifest, matches, vq = pairs_for_diffusion
    opts = lambda out, steps: TrainOptions(output=out, steps=steps, batch_size=2, lr=1e-2, device="cpu",  # noqa: E731
                                           checkpoint_every=10, warmup_steps=0, validate_every=0, log_every=1,
                                           ema_decay=0.0)
    first = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", vqvae=vq, matches=matches, ref_dropout=0.0,
                           ca_levels=[0])
    assert first.model.ref_branch.levels == [0]  # the config's [0, 1, 2] overridden
    base = run_training(first, opts(tmp_path / "base", 2))
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", init_from=base, matches=matches,
                           freeze_unet=True, ca_levels=[2, 0, 1])
    old, grown = RefSRModel.from_pretrained(base), stage.model
    assert grown.ref_branch.levels == [0, 1, 2] and grown.ref_branch.config.ca_levels == [0, 1, 2]
    kept = old.ref_branch.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in grown.ref_branch.state_dict().items() if k in kept)
    batch = next(iter(torch.utils.data.DataLoader(stage.data, batch_size=2)))
    module, old_module = stage.module(), DiffusionModule(old)
    z, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 400])
    with torch.no_grad():
        preds = [m.model(z, t, batch["lr"], *m.contexts(batch["lr"], batch["refs"], batch["ref_mask"]))
                 for m in (old_module, module)]
    assert bool(batch["ref_mask"].any()) and torch.equal(*preds)
    ft = run_training(stage, opts(tmp_path / "ft", 3))
    after = RefSRModel.from_pretrained(ft).ref_branch
    assert after.levels == [0, 1, 2]
    assert not torch.equal(after.attn["2"].to_out.weight, torch.zeros_like(after.attn["2"].to_out.weight))
    with pytest.raises(ValueError, match=r"drop the trained position\(s\) \[0\]"):
        DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", init_from=ft, matches=matches, ca_levels=[1, 2])
    with pytest.raises(ValueError, match="they need kind ldm-ca"):  # not silently ignored by the library either
        DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", init_from=ft, ca_levels=[0, 1, 2])
    for levels, message in (("1,2", "drop the trained position(s) [0]"), ("0,1,2,7", "position 7 does not exist"),
                            ("0,x", "neither a comma-separated list of integers nor 'all'"), ("0,1,2 --kind ldm", "need kind ldm-ca")):
        r = CliRunner().invoke(cli, ["train", "diffusion", str(manifest), "--init-from", str(ft), "--matches",
                                     str(matches), "--ca-levels", *levels.split(), "-o", str(tmp_path / "bad")])
        assert r.exit_code == 2 and "--ca-levels" in r.output and message in r.output, r.output
        assert not (tmp_path / "bad").exists()


@pytest.fixture
def pairs_for_diffusion(tmp_path, astronaut, coffee, motorcycle_pair):
    from test_train import make_pairs

    manifest, matches = make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})
    photos = _photos(tmp_path / "photos", astronaut, coffee, motorcycle_pair)
    run_training(AutoencoderStage(photos, config=AE_CONFIG, lpips=False, holdout=0.0), _ae_opts(tmp_path / "vq", 1))
    return manifest, matches, tmp_path / "vq"


# ---------------------------------------------------------------------------------------
# Sampling: --start-strength
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_start_strength_with_an_oracle_denoiser_returns_the_start_latent(sampler):
    """With the exact noise prediction for z_init, the reverse process from t_s ends at z_init;
    it runs round(S x steps) model calls, the first at about S x T."""
    from refsr.models.ldm import SCHEDULER_CONFIG
    from refsr.sample.samplers import denoise, make_scheduler

    sched = make_scheduler(sampler, SCHEDULER_CONFIG)
    g = torch.Generator().manual_seed(0)
    z_init, noise = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    alphas = make_scheduler("ddpm", SCHEDULER_CONFIG).alphas_cumprod
    calls = []

    def oracle(x, t):
        calls.append(int(t))
        a = alphas[int(t)]
        return (x - a.sqrt() * z_init) / (1 - a).sqrt()

    out = denoise(oracle, noise, sched, 20, init_latents=z_init, strength=0.4)
    assert len(calls) == 8 and abs(calls[0] - 400) <= 50
    assert torch.allclose(out, z_init, atol=1e-3)


def test_start_strength_1_is_the_pure_noise_path():
    from refsr.models.ldm import SCHEDULER_CONFIG
    from refsr.sample.samplers import denoise, make_scheduler

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 8, 8, generator=g)
    fn = lambda x, t: 0.1 * x  # noqa: E731
    a = denoise(fn, noise, make_scheduler("ddim", SCHEDULER_CONFIG), 5)
    b = denoise(fn, noise, make_scheduler("ddim", SCHEDULER_CONFIG), 5, init_latents=torch.zeros_like(noise), strength=1.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="start strength must be in"):
        denoise(fn, noise, make_scheduler("ddim", SCHEDULER_CONFIG), 5, init_latents=noise, strength=0.0)


def test_start_strength_tiled_equals_untiled_for_one_tile(coffee):
    from refsr.sample import SampleSettings, restore_tensor

    torch.manual_seed(0)
    model = RefSRModel.from_config("tiny", kind="ldm").eval()
    model.latent = LatentSpec(scale=1.7)
    lr = torch.from_numpy(cv2.resize(coffee, (16, 16), interpolation=cv2.INTER_AREA).transpose(2, 0, 1).copy())[None] * 2 - 1
    s = SampleSettings(steps=4, tile=16, tile_overlap=4, start_strength=0.5)
    a = restore_tensor(model, lr, settings=s, generator=torch.Generator().manual_seed(1))
    b = restore_tensor(model, lr, settings=s, generator=torch.Generator().manual_seed(1), force_tiles=True)
    c = restore_tensor(model, lr, settings=SampleSettings(steps=4, tile=16, tile_overlap=4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("option,value", [("--start-strength", "0"), ("--start-strength", "-0.5"),
                                          ("--start-strength", "1.5"), ("--draws", "0"), ("--draws", "-1"),
                                          ("--draws", "1.5")])
def test_start_strength_outside_0_1_or_draws_below_1_is_a_usage_error(tmp_path, coffee, option, value):
    write_image(tmp_path / "lr.png", cv2.resize(coffee, (16, 16), interpolation=cv2.INTER_AREA))
    result = CliRunner().invoke(cli, ["-q", "sample", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                      option, value])
    assert result.exit_code == 2 and option in result.output


def test_start_strength_is_recorded_in_run_json(tmp_path, coffee):
    torch.manual_seed(0)
    RefSRModel.from_config("tiny", kind="ldm").save_pretrained(tmp_path / "m")
    write_image(tmp_path / "lr.png", cv2.resize(coffee, (16, 16), interpolation=cv2.INTER_AREA))
    result = CliRunner().invoke(cli, ["-q", "sample", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                      "--model", str(tmp_path / "m"), "--steps", "4", "--start-strength", "0.5",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "out" / "run.json")["start_strength"] == 0.5


# ---------------------------------------------------------------------------------------
# Sampling: --draws
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [0, 8])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_k_draws_decode_the_mean_of_k_one_draw_latents(coffee, monkeypatch, tile, batch_size):
    """draws = K: one pass of the sampler over K latents, the first from a one-draw run's
    noise, the next from the noise the generator gives after it; the mean of their denoised
    latents is decoded. One latent per U-Net call (batch size 1) gives each draw the bytes of
    its one-draw run; a batch of the K draws (batch size 2: both draws of a tile, or of the
    whole image, in one call) the same up to float rounding."""
    import refsr.sample.core as core
    from refsr.sample import SampleSettings, restore_tensor

    torch.manual_seed(0)
    model = RefSRModel.from_config("tiny", kind="ldm").eval()
    lr = torch.from_numpy(cv2.resize(coffee, (16, 12), interpolation=cv2.INTER_AREA).transpose(2, 0, 1).copy())[None] * 2 - 1
    finals, decoded, decode, calls, forward = [], [], core._decode, [], model.forward
    monkeypatch.setattr(core, "_decode", lambda m, x, *a: decoded.append(x) or decode(m, x, *a))
    monkeypatch.setattr(model, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))

    def run(draws, generator, batch=1):  # -> output, the denoised latents (K, C, h, w), the latent decoded
        finals.clear(), decoded.clear(), calls.clear()
        s = SampleSettings(steps=4, start_strength=0.5, draws=draws, tile=tile, tile_overlap=2, batch_size=batch)
        last = lambda step: step["i"] == 1 and finals.append(step["x"])  # noqa: E731  (4 steps from 0.5: 2 passes)
        out = restore_tensor(model, lr, settings=s, generator=generator, callback=last, disable=True)
        (final,) = finals
        return out, final, decoded[0]

    one, a, _ = run(1, torch.Generator().manual_seed(5))
    assert torch.equal(one, run(None, torch.Generator().manual_seed(5))[0])  # a model's default: one draw
    g = torch.Generator().manual_seed(5)
    torch.randn(a.shape, generator=g)  # the first draw's noise: g now gives the second's
    second, b, _ = run(1, g)
    mean, both, x = run(2, torch.Generator().manual_seed(5), batch_size)
    assert both.shape[0] == 2 and set(calls) == {batch_size}  # one pass; batch_size latents per call
    if batch_size == 1:
        assert torch.equal(both[:1], a) and torch.equal(both[1:], b)
    else:
        assert torch.allclose(both[:1], a, atol=1e-5) and torch.allclose(both[1:], b, atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-3)
    assert torch.allclose(x, (a + b) / 2, atol=1e-5)
    assert not torch.allclose(mean, one, atol=1e-3) and not torch.allclose(mean, second, atol=1e-3)


@pytest.mark.parametrize("tile", [0, 8])
@pytest.mark.parametrize("kind", ["ldm", "ldm-ca"])
def test_mirrored_draws_restore_the_mirror_image_and_mirror_it_back(coffee, astronaut, tile, kind):
    """--mirror with 2 draws: draw 0 restores the LR, draw 1 (from the noise that follows) the
    LR's mirror image, each view's latent is decoded on its own (a latent is not mirror-symmetric)
    and the output is the mean of the first image and the mirror of the second: exactly a one-draw
    run of the LR and the mirror of a one-draw run of the mirrored LR from the second draw's
    noise (up to float rounding); for ldm-ca both views attend to the same references (each view
    its own LR contexts). With one draw --mirror changes nothing."""
    from refsr.sample import SampleSettings, restore_tensor
    from refsr.sample.core import model_factors

    torch.manual_seed(0)
    model = RefSRModel.from_config("tiny", kind=kind).eval()
    refs = None
    if kind == "ldm-ca":  # an update that depends on the references: the output projections made non-zero
        for level in model.ref_branch.attn.values():
            torch.nn.init.normal_(level.to_out.weight, std=0.1)
        refs = torch.from_numpy(cv2.resize(astronaut, (model.ref_size,) * 2).transpose(2, 0, 1).copy())[None, None] * 2 - 1
    lr = torch.from_numpy(cv2.resize(coffee, (16, 12), interpolation=cv2.INTER_AREA).transpose(2, 0, 1).copy())[None] * 2 - 1
    scale, vq, _ = model_factors(model)  # 16 x 12 needs no padding: both views have the same canvas

    def run(image, draws, mirror, generator, with_refs=True):
        s = SampleSettings(steps=4, start_strength=0.5, draws=draws, mirror=mirror, tile=tile, tile_overlap=2)
        return restore_tensor(model, image, refs if with_refs else None, settings=s, generator=generator, disable=True)

    one = run(lr, 1, False, torch.Generator().manual_seed(5))
    if refs is not None:  # the references change the output: the views' contexts are used
        assert not torch.allclose(one, run(lr, 1, False, torch.Generator().manual_seed(5), with_refs=False), atol=1e-3)
    assert torch.equal(run(lr, 1, True, torch.Generator().manual_seed(5)), one)
    g = torch.Generator().manual_seed(5)
    torch.randn((1, model.vqvae.config.latent_channels, 12 * scale // vq, 16 * scale // vq), generator=g)  # draw 0's noise
    mirrored = run(lr.flip(-1), 1, False, g)
    both = run(lr, 2, True, torch.Generator().manual_seed(5))
    assert torch.allclose(both, (one + mirrored.flip(-1)) / 2, atol=1e-5)  # float rounding of mirrored convolutions
    assert not torch.allclose(both, run(lr, 2, False, torch.Generator().manual_seed(5)), atol=1e-3)
    with pytest.raises(ValueError, match="mirror must be True, False or None"):
        SampleSettings(mirror=1).check()


def test_sampling_on_the_cpu_runs_channels_last_with_the_same_result(tmp_path):
    """`refsr sample` loads a model channels-last on the CPU (oneDNN's faster layout): its
    convolution weights are NHWC, and what it restores (tiled, with references, mirrored draws,
    a start strength and a batch of draws) equals the default layout's up to float rounding."""
    from refsr.sample import SampleSettings
    from refsr.sample.core import restore_tensor
    from refsr.sample.loading import load_model

    torch.manual_seed(0)
    RefSRModel.from_config(MICRO, kind="ldm-ca").save_pretrained(tmp_path / "m")
    nchw = RefSRModel.from_pretrained(tmp_path / "m").eval()
    nhwc, _ = load_model(str(tmp_path / "m"), torch.device("cpu"))
    conv = nhwc.vqvae.encoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.vqvae.encoder.conv_in.weight.is_contiguous()
    lr = torch.rand(1, 3, 20, 28) * 2 - 1
    refs = torch.rand(1, 2, 3, MICRO["ref_size"], MICRO["ref_size"]) * 2 - 1
    settings = SampleSettings(steps=4, start_strength=0.5, draws=2, mirror=True, tile=12, tile_overlap=4,
                              batch_size=2, color_fix="luma")
    outs = [restore_tensor(model, lr, refs, settings=settings, generator=torch.Generator().manual_seed(3), disable=True)
            for model in (nchw, nhwc)]
    assert outs[0].shape == (1, 3, 80, 112)
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and outs[0].abs().mean() > 0.01


def test_draws_below_1_are_refused_by_the_library_too():
    from refsr.sample import SampleSettings

    with pytest.raises(ValueError, match="draws must be an integer >= 1, got 0"):
        SampleSettings(draws=0).check()


def test_draws_default_to_the_models_recommendation_and_are_recorded(tmp_path, coffee):
    from refsr.sample import SampleSettings
    from refsr.sample.core import resolve_settings

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm").eval()
    model.recipe = {"recommended_draws": 3, "recommended_steps": 2}
    assert resolve_settings(model, SampleSettings()).draws == 3
    assert resolve_settings(model, SampleSettings(draws=1)).draws == 1
    model.save_pretrained(tmp_path / "m")
    write_image(tmp_path / "lr.png", cv2.resize(coffee, (16, 16), interpolation=cv2.INTER_AREA))
    args = ["-q", "sample", str(tmp_path / "lr.png"), "--model", str(tmp_path / "m"), "--device", "cpu", "-o"]
    for out, extra, draws, mirror in (("a", [], 3, False), ("b", ["--draws", "2"], 2, False),
                                      ("c", ["--draws", "2", "--mirror"], 2, True)):
        r = CliRunner().invoke(cli, args + [str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.output
        assert (read_json(tmp_path / out / "run.json")["draws"], read_json(tmp_path / out / "run.json")["mirror"]) == (draws, mirror)
    r = CliRunner().invoke(cli, args + [str(tmp_path / "c"), "--draws", "2"])
    assert r.exit_code == 1 and "mirror True -> False" in r.output
    r = CliRunner().invoke(cli, args + [str(tmp_path / "a"), "--draws", "1"])  # other settings than a's outputs
    assert r.exit_code == 1 and "draws 3 -> 1" in r.output
    run = read_json(tmp_path / "b" / "run.json")  # a folder sampled before draws existed: one draw each
    del run["draws"]
    (tmp_path / "b" / "run.json").write_text(json.dumps(run))
    r = CliRunner().invoke(cli, args + [str(tmp_path / "b")])
    assert r.exit_code == 1 and "draws 1 -> 3" in r.output
    model.recipe = {"recommended_draws": 0}
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        resolve_settings(model, SampleSettings())


# ---------------------------------------------------------------------------------------
# One fragment function for training and sampling
# ---------------------------------------------------------------------------------------


def test_a_box_smaller_than_ref_size_gives_the_same_fragment_in_training_and_sampling(tmp_path, astronaut, coffee):
    from refsr.sample.references import load_match_refs
    from refsr.train.data import PairDataset

    from test_train import make_pairs

    manifest, matches = make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})
    data = PairDataset(manifest, 32, 4, matches, ref_size=64, max_refs=2)
    rec = [json.loads(line) for line in matches.read_text().splitlines()][0]
    ref = {**rec["refs"][0], "abs_path": matches.parent / rec["refs"][0]["path"]}
    assert ref["box"][2] < 64  # enlarged: the case where the two used to differ (AREA vs CUBIC)
    train = data._fragment(ref)
    sample = load_match_refs({"refs": [ref]}, 64)[0].pixels
    assert train.shape == (64, 64, 3) and np.array_equal(train, sample)


def test_training_refuses_a_box_outside_its_image_as_sampling_does(tmp_path, astronaut, coffee):
    from refsr.train.data import PairDataset

    from test_train import make_pairs

    manifest, matches = make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})
    records = [json.loads(line) for line in matches.read_text().splitlines()]
    records[0]["refs"][0]["box"] = [500, 500, 40, 40]
    write_jsonl(matches, records)
    data = PairDataset(manifest, 32, 4, matches, ref_size=32, max_refs=2)
    ref = {**records[0]["refs"][0], "abs_path": matches.parent / records[0]["refs"][0]["path"]}
    with pytest.raises(InputError, match=r"box \[500, 500, 40, 40\] is outside the 80x60 image"):
        data._fragment(ref)


def test_self_reference_is_a_view_of_the_samples_own_hr_cut_as_matches_are(tmp_path, astronaut, coffee):
    """--self-ref-fraction: with fraction 1 every sample with references has exactly one slot
    holding cut_fragment of its own HR crop at the recorded box, a square of side >= the
    patch that shows the patch's centre; the other slots are its matches as before. Fraction
    0 leaves every sample (and the random stream) exactly as without the option; with kind
    ldm or outside [0, 1] it is an error, and the fraction is recorded in the model's recipe."""
    from refsr.io import image_to_tensor, read_rgb
    from refsr.sample.references import cut_fragment
    from refsr.train.data import PairDataset, self_view_box

    from test_train import make_pairs

    manifest, matches = make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})
    plain = PairDataset(manifest, 32, 4, matches, ref_size=24, max_refs=2, seed=3)
    zero = PairDataset(manifest, 32, 4, matches, ref_size=24, max_refs=2, seed=3, self_ref_fraction=0.0)
    one = PairDataset(manifest, 32, 4, matches, ref_size=24, max_refs=2, seed=3, self_ref_fraction=1.0)
    hrs = [read_rgb(r["hr_path"]) for r in plain.pairs]
    for g in range(12):
        a, b, c = plain[g], zero[g], one[g]
        assert a.keys() == b.keys() and "self_ref_box" not in a and a["index"] == b["index"] == c["index"]
        assert all(torch.equal(a[k], b[k]) for k in ("hr", "lr", "refs", "ref_mask"))
        assert torch.equal(a["hr"], c["hr"]) and torch.equal(a["ref_mask"], c["ref_mask"])
        x, y, side, side_y = c["self_ref_box"].tolist()
        hr = hrs[c["index"]]
        assert side == side_y and 32 <= side <= min(hr.shape[:2]) and x + side <= hr.shape[1] and y + side <= hr.shape[0]
        own = image_to_tensor(cut_fragment(hr, [x, y, side, side], 24), (-1, 1))
        slots = [j for j in range(2) if torch.equal(c["refs"][j], own)]
        assert len(slots) == 1 and c["ref_mask"][slots[0]]
        others = [j for j in range(2) if j != slots[0]]
        assert all(torch.equal(c["refs"][j], a["refs"][j]) for j in others)  # the matches' slots unchanged
        # the patch is the HR at some offset: the view's box shows the patch's centre
        offsets = [(py, px) for py in range(0, hr.shape[0] - 31, 4) for px in range(0, hr.shape[1] - 31, 4)
                   if torch.equal(image_to_tensor(hr[py:py + 32, px:px + 32], (-1, 1)), c["hr"])]
        assert any(x <= px + 16 <= x + side and y <= py + 16 <= y + side for py, px in offsets)
    rng = np.random.default_rng(0)
    for _ in range(200):  # the box shows the patch's centre wherever the patch is
        px, py = int(rng.integers(0, 65 - 32)), int(rng.integers(0, 49 - 32))
        bx, by, side, _ = self_view_box(48, 64, [px, py, 32, 32], rng)
        assert 32 <= side <= 48 and 0 <= bx <= 64 - side and 0 <= by <= 48 - side
        assert bx <= px + 16 <= bx + side and by <= py + 16 <= by + side
    with pytest.raises(ValueError, match=r"self reference fraction must be in \[0, 1\]"):
        PairDataset(manifest, 32, 4, matches, ref_size=24, max_refs=2, self_ref_fraction=1.5)


def test_self_ref_fraction_needs_kind_ldm_ca_and_is_recorded(tmp_path, pairs_for_diffusion):
    manifest, matches, vq = pairs_for_diffusion
    stage = DiffusionStage(manifest, config=AE_CONFIG, kind="ldm-ca", vqvae=vq, matches=matches, self_ref_fraction=0.5)
    assert stage.model.recipe["self_ref_fraction"] == 0.5 and stage.data.self_ref_fraction == 0.5
    with pytest.raises(ValueError, match="they need kind ldm-ca"):
        DiffusionStage(manifest, config=AE_CONFIG, kind="ldm", vqvae=vq, self_ref_fraction=0.5)
    r = CliRunner().invoke(cli, ["train", "diffusion", str(manifest), "--vqvae", str(vq), "--kind", "ldm",
                                 "--self-ref-fraction", "0.5", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--self-ref-fraction" in r.output and "need kind ldm-ca" in r.output, r.output
    assert not (tmp_path / "bad").exists()


def test_decoder_only_fine_tuning_keeps_the_latents(tmp_path, ae_run):
    """--init-from + --decoder-only + --decode continuous: the encoder (so the latents a
    denoiser was trained on) is unchanged, the decoder moved, and the export decodes the
    continuous latent when that is what the held-out images prefer. The latent scale is the
    one the encoder's folder had (here 0.5, far from a measured 1 / std), so a denoiser
    trained on those latents sees them as before; without --init-from it is a usage error."""
    import shutil

    from diffusers import VQModel

    from refsr.models.autoencoder import write_latent_spec

    stage, run, model = ae_run
    photos = stage.data.paths[0].parent
    init = tmp_path / "init"
    shutil.copytree(model / "vqvae", init)
    measured = read_latent_spec(init).scale
    write_latent_spec(init, LatentSpec(scale=0.5, decode_quantized=True))
    ft = AutoencoderStage(photos, config=AE_CONFIG, lpips=False, holdout=0.5, init_from=init, decoder_only=True,
                          decode="continuous")
    out = run_training(ft, _ae_opts(tmp_path / "ft", steps=2))
    assert read_latent_spec(out / "vqvae").scale == 0.5 and abs(measured - 0.5) > 0.1
    before, after = VQModel.from_pretrained(model / "vqvae"), VQModel.from_pretrained(out / "vqvae")
    b, a = before.state_dict(), after.state_dict()
    frozen = [k for k in b if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    moved = [k for k in b if k.startswith(("decoder.", "post_quant_conv.")) and not torch.equal(b[k], a[k])]
    assert frozen and all(torch.equal(b[k], a[k]) for k in frozen) and moved
    ev = read_json(tmp_path / "ft" / "eval.json")
    spec = read_latent_spec(out / "vqvae")
    assert spec.decode_quantized == (ev["quantized"]["psnr"] >= ev["continuous"]["psnr"])
    r = CliRunner().invoke(cli, ["train", "autoencoder", str(photos), "--decoder-only", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--decoder-only" in r.output and "to start from (--init-from)" in r.output, r.output
    assert not (tmp_path / "bad").exists()


def test_a_model_folders_vq_brings_the_models_latent_settings(tmp_path, monkeypatch):
    """--vqvae or --init-from a model folder: the latent scale and decoding are the model's
    (model_index.json, or an older folder's refsr.json), read from its settings without
    loading its weights, not scale 1 with quantised decoding for a vqvae/ without its own file."""
    import json

    from refsr.models.autoencoder import LATENT_FILE
    from refsr.train.diffusion import build_model, vq_latent_spec

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm")
    model.latent = LatentSpec(scale=2.5, decode_quantized=False)
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "vqvae" / LATENT_FILE).exists()
    with monkeypatch.context() as m:
        m.setattr(RefSRModel, "from_pretrained", lambda *a, **k: pytest.fail("loaded the whole model"))
        spec = vq_latent_spec(tmp_path / "m")
        assert (spec.scale, spec.decode_quantized) == (2.5, False)
        old = tmp_path / "old"  # the layout before model_index.json
        (old / "vqvae").mkdir(parents=True)
        (old / "unet").mkdir()
        for part in ("vqvae", "unet"):
            (old / part / "config.json").write_text((tmp_path / "m" / part / "config.json").read_text())
        (old / "refsr.json").write_text(json.dumps({"kind": "ldm", "latent_scale": 0.75, "decode_quantized": True}))
        spec = vq_latent_spec(old)
        assert (spec.scale, spec.decode_quantized) == (0.75, True)
    built = build_model(MICRO, "ldm", vqvae_dir=tmp_path / "m")
    assert (built.latent.scale, built.latent.decode_quantized) == (2.5, False)


def test_a_txt_list_of_images_is_training_data(tmp_path, astronaut, coffee, motorcycle_pair):
    from refsr.train.data import image_paths

    photos = _photos(tmp_path / "photos", astronaut, coffee, motorcycle_pair)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("# two photos\n../photos/coffee.png\n\n../photos/left.png\n")
    paths, root = image_paths(tmp_path / "lists" / "train.txt")
    assert [p.name for p in paths] == ["coffee.png", "left.png"] and root == tmp_path / "lists"
    (tmp_path / "lists" / "bad.txt").write_text("../photos/coffee.png\n../photos/nope.png\n")
    with pytest.raises(InputError, match=r"bad.txt: 1 listed image\(s\) do not exist \(first: .*nope.png\)"):
        image_paths(tmp_path / "lists" / "bad.txt")
    assert photos


def test_sampling_starts_where_the_model_recommends_unless_told():
    from refsr.sample import start_strength_for
    from refsr.sample.loading import default_model_path

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm")
    assert start_strength_for(model) == 1.0
    model.recipe = {"recommended_start_strength": 0.3}
    assert start_strength_for(model) == 0.3 and start_strength_for(model, 0.7) == 0.7
    shipped = RefSRModel.from_pretrained(default_model_path())
    assert start_strength_for(shipped) == shipped.recipe["recommended_start_strength"] < 1
    assert not shipped.latent.decode_quantized


def test_a_start_strength_above_what_the_model_was_trained_for_is_refused(tmp_path, coffee):
    """A model trained only on timesteps below max_strength x T (train --max-strength) cannot
    start from noisier latents: sample refuses with a one-line error naming the limit."""
    from refsr.sample import start_strength_for

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm").eval()
    model.recipe = {"max_strength": 0.5, "recommended_start_strength": 0.3}
    assert start_strength_for(model, 0.5) == 0.5
    with pytest.raises(InputError, match=r"start strength 0.8 is above 0.5.*--start-strength <= 0.5"):
        start_strength_for(model, 0.8)
    model.save_pretrained(tmp_path / "m")
    lr = tmp_path / "lr.png"
    write_image(lr, coffee[:32, :32])
    r = CliRunner().invoke(cli, ["sample", str(lr), "--model", str(tmp_path / "m"), "--steps", "2",
                                  "--start-strength", "0.8", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "is above 0.5" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["sample", str(lr), "--model", str(tmp_path / "m"), "--steps", "2",
                                  "--device", "cpu", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["start_strength"] == 0.3  # the model's value


def test_steps_and_colour_fix_default_to_the_models_recommendation(tmp_path, coffee):
    """`refsr sample` without --steps/--color-fix samples as the model's recipe recommends (what
    its published numbers used); a model that recommends nothing samples as diffusers' LDM-SR
    (50 steps, no colour fix); what the user gives wins; a bad recommendation is refused."""
    from refsr.sample import SampleSettings, recommended_settings
    from refsr.sample.core import resolve_settings
    from refsr.sample.samplers import sampling_timesteps

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm").eval()
    plain = resolve_settings(model, SampleSettings())
    assert (plain.steps, plain.color_fix, plain.start_strength, plain.draws, plain.mirror) == (50, "none", 1.0, 1, False)
    model.recipe = {"recommended_steps": 3, "recommended_color_fix": "adain", "recommended_start_strength": 0.5}
    assert recommended_settings(model) == {"steps": 3, "color_fix": "adain", "color_fix_levels": 5,
                                           "start_strength": 0.5, "draws": 1, "mirror": False}
    told = resolve_settings(model, SampleSettings(steps=2, color_fix="none"))
    assert (told.steps, told.color_fix, told.start_strength) == (2, "none", 0.5)
    model.save_pretrained(tmp_path / "m")
    lr = tmp_path / "lr.png"
    write_image(lr, coffee[:32, :32])
    args = ["sample", str(lr), "--model", str(tmp_path / "m"), "--device", "cpu", "-o"]
    r = CliRunner().invoke(cli, args + [str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert (run["steps"], run["color_fix"], run["start_strength"]) == (3, "adain", 0.5)
    assert run["timesteps"] == sampling_timesteps("ddim", model.scheduler_config, 3, 0.5)
    r = CliRunner().invoke(cli, args + [str(tmp_path / "b"), "--steps", "2", "--color-fix", "none"])
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert r.exit_code == 0 and (run["steps"], run["color_fix"]) == (2, "none")
    model.recipe = {"recommended_color_fix": "sepia"}
    with pytest.raises(ValueError, match="unknown color fix 'sepia'"):
        resolve_settings(model, SampleSettings())


def test_colour_fix_levels_come_from_the_model_and_apply_to_wavelet_fixes_only(tmp_path, coffee):
    """--color-fix-levels: the model's recipe.recommended_color_fix_levels when left out (5 when it
    recommends none), the user's value otherwise, recorded in run.json and changing the output; given
    with a fix that has no levels (adain, none) it is a usage error naming the option. An output
    folder whose run.json predates the setting was made with 5 levels and resumes with them."""
    from refsr.errors import OptionError
    from refsr.sample import SampleSettings
    from refsr.sample.core import resolve_settings

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm").eval()
    assert resolve_settings(model, SampleSettings(color_fix="luma")).color_fix_levels == 5
    model.recipe = {"recommended_color_fix": "wavelet", "recommended_color_fix_levels": 3}
    assert resolve_settings(model, SampleSettings()).color_fix_levels == 3
    assert resolve_settings(model, SampleSettings(color_fix_levels=2)).color_fix_levels == 2
    adain = resolve_settings(model, SampleSettings(color_fix="adain"))  # the recommended levels do not apply
    assert (adain.color_fix, adain.color_fix_levels) == ("adain", None)
    assert resolve_settings(model, adain) == adain
    with pytest.raises(OptionError, match="color_fix_levels: the adain colour fix has no wavelet levels"):
        resolve_settings(model, SampleSettings(color_fix="adain", color_fix_levels=3))
    with pytest.raises(ValueError, match="color fix levels must be an integer >= 1, got 0"):
        resolve_settings(model, SampleSettings(color_fix_levels=0))
    model.save_pretrained(tmp_path / "m")
    lr = tmp_path / "lr.png"
    write_image(lr, coffee[:32, :32])
    args = ["sample", str(lr), "--model", str(tmp_path / "m"), "--steps", "2", "--device", "cpu", "-o"]
    outputs = {}
    for name, extra in (("recommended", []), ("five", ["--color-fix-levels", "5"])):
        r = CliRunner().invoke(cli, args + [str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert (run["color_fix"], run["color_fix_levels"]) == ("wavelet", 3 if name == "recommended" else 5)
        outputs[name] = read_image(tmp_path / name / "lr_sr.png").rgb
    assert np.abs(outputs["recommended"] - outputs["five"]).max() > 1 / 255
    r = CliRunner().invoke(cli, args + [str(tmp_path / "c"), "--color-fix", "adain", "--color-fix-levels", "3"])
    assert r.exit_code == 2 and "--color-fix-levels" in r.output and "adain colour fix has no wavelet levels" in r.output
    run_json = tmp_path / "five" / "run.json"  # as written before the setting existed: it resumes with 5 levels
    old = json.loads(run_json.read_text())
    del old["color_fix_levels"]
    run_json.write_text(json.dumps(old))
    r = CliRunner().invoke(cli, args + [str(tmp_path / "five"), "--color-fix-levels", "5"])
    assert r.exit_code == 0 and "skipped 1 existing output" in r.output, r.output
    r = CliRunner().invoke(cli, args + [str(tmp_path / "five")])  # the model's 3 levels: other settings
    assert r.exit_code != 0 and "color_fix_levels 5 -> 3" in r.output, r.output


def test_run_json_names_the_timesteps_the_model_was_evaluated_at():
    """start strength S keeps the last round(S x steps) of the sampler's timesteps: the
    recorded list is what denoise evaluates (the callback sees the same t's)."""
    from diffusers import DDPMScheduler

    from refsr.sample.samplers import denoise, make_scheduler, sampling_timesteps

    config = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear").config)
    assert sampling_timesteps("ddim", config, 20, 0.3) == [250, 200, 150, 100, 50, 0]
    assert sampling_timesteps("ddim", config, 4, 0.5) == [250, 0]
    assert sampling_timesteps("ddim", config, 10, 1.0) == list(range(900, -1, -100))
    seen = []
    x = torch.zeros(1, 3, 4, 4)
    denoise(lambda x, t: torch.zeros_like(x), torch.randn(1, 3, 4, 4), make_scheduler("ddim", config), 4,
            init_latents=x, strength=0.5, callback=lambda d: seen.append(int(d["t"])), disable=True)
    assert seen == [250, 0]


def test_the_shipped_model_recommends_the_settings_its_numbers_were_measured_with():
    from refsr.sample import recommended_settings
    from refsr.sample.loading import default_model_path

    shipped = RefSRModel.from_pretrained(default_model_path())
    assert recommended_settings(shipped) == {"steps": 4, "color_fix": "luma", "color_fix_levels": 4,
                                             "start_strength": 0.5, "draws": 4, "mirror": True}


def test_without_held_out_images_the_export_decodes_as_the_decoder_was_trained(tmp_path, astronaut, coffee,
                                                                              motorcycle_pair):
    photos = _photos(tmp_path / "photos", astronaut, coffee, motorcycle_pair)
    for decode in ("quantized", "continuous"):
        stage = AutoencoderStage(photos, config=AE_CONFIG, lpips=False, holdout=0.0, decode=decode)
        out = run_training(stage, _ae_opts(tmp_path / decode, steps=1))
        assert not (tmp_path / decode / "eval.json").exists()
        assert read_latent_spec(out / "vqvae").decode_quantized == (decode == "quantized")
