"""scripts/train_default_model.sh rehearsed at tiny size on the CPU: the GPU command, stage by
stage, on fake "birds" made of scikit-image photos (issue 13: GPU minutes go to training only)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from refsr.io import read_json, write_image

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["astronaut", "coffee", "chelsea", "motorcycle_left", "motorcycle_right"]


def _fake_data(root: Path) -> Path:
    """2 species x 5 photos (128 px crops of different photos) and 3 general photos."""
    import cv2

    from refsr.demo import skimage_photo

    for s, species in enumerate(["Sp_A", "Sp_B"]):
        for i in range(5):
            img = skimage_photo(NAMES[(i + s) % 5])
            y, x = (i * 13) % (img.shape[0] - 128), (i * 29) % (img.shape[1] - 128)
            write_image(root / "birds" / species / f"{species}_{i}.png", img[y : y + 128, x : x + 128])
    for name in NAMES[:3]:
        write_image(root / "general" / "Set" / f"{name}.png",
                    cv2.resize(skimage_photo(name), (160, 128), interpolation=cv2.INTER_AREA))
    return root


def _unparts(results: Path, name: str, dest: Path, part_mb: float) -> Path:
    """Reassemble RESULTS/NAME.tar.part* (as the install and unpack stages do) into DEST; each part
    fits the device's return limit as asked (PART_MB)."""
    parts = sorted(results.glob(f"{name}.tar.part*"))
    assert parts and all(f.stat().st_size <= part_mb * 2**20 for f in parts)
    whole = dest.with_suffix(".tar")
    whole.write_bytes(b"".join(f.read_bytes() for f in parts))
    with tarfile.open(whole) as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.mark.slow
def test_train_default_model_script_runs_every_stage_at_tiny_size(tmp_path):
    """From scratch (INIT_FROM=none), then from that run's model as the default recipe starts
    from the shipped one: decoder-only autoencoder (same encoder, same latent scale), both
    denoisers fine-tuned with run 7's recipe, the model before as a row of the table, and the
    evaluated sampling recorded as the exported model's recommended one."""
    data = _fake_data(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DATA": str(data), "PACK": str(tmp_path / "pack"), "INIT_FROM": "none",
           "WORK": str(tmp_path / "work"), "RESULTS": str(tmp_path / "results"), "DEVICE": "cpu", "CONFIG": "tiny",
           "CROP": "64", "BATCH": "2", "WORKERS": "0", "AE_STEPS": "2", "STEPS": "2", "SAMPLE_STEPS": "2",
           "AE_MAX_MINUTES": "0", "MAX_MINUTES": "0", "AE_HOLDOUT": "0.3", "PYTHON": sys.executable, "CA_LEVELS": "model",
           "METRICS": "psnr,ssim",  # NIQE needs 200 px crops (2 blocks of 96 after the border)
           "GPU_DEPS": "0",  # no downloads in a test (their set-up on the GPU machine: tests/test_gpu_env.py)
           "PART_MB": "1", "REFSR": f"{sys.executable} -m refsr_cli"}
    stages = "pack pairs retrieval autoencoder diffusion handback eval export"
    run = subprocess.run(["bash", "scripts/train_default_model.sh", *stages.split()], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = tmp_path / "results"
    pack = read_json(tmp_path / "pack" / "pack.json")
    assert pack["test"] == 4 and pack["val"] == 2 and pack["test_general"] >= 1  # 2 test + 1 val per species
    assert "the GPU machine's copy:" in run.stdout and "of 64" in run.stdout
    # what the device returns (files of at most 16 MiB): parts of at most PART_MB (here 1 MiB, so several)
    returned = sorted(f.name for f in results.iterdir())
    assert len([n for n in returned if n.startswith("default_model.tar.part")]) > 1 and "reports.tar.gz" in returned
    assert all(n.startswith(("trained.tar.part", "default_model.tar.part")) or n == "reports.tar.gz" for n in returned)
    # the first command's handback: the trained models, float16, that an eval here can take up (unpack)
    trained = _unparts(results, "trained", tmp_path / "trained", 1)
    from safetensors.torch import load_file

    for kind in ("ldm", "ldm-ca"):
        here = load_file(str(tmp_path / "work" / "runs" / kind / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        back = load_file(str(trained / "runs" / kind / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        assert back.keys() == here.keys() and all(torch.equal(back[k], here[k].half()) for k in here)
        assert (trained / "runs" / kind / "metrics.jsonl").read_bytes() == \
            (tmp_path / "work" / "runs" / kind / "metrics.jsonl").read_bytes()
    assert (trained / "runs" / "vq" / "eval.json").is_file()
    for split in ("train", "val", "test", "test_general"):  # an eval here (unpack) needs no retrieval
        assert (trained / f"matches_{split}.jsonl").read_bytes() == (tmp_path / "work" / f"matches_{split}.jsonl").read_bytes()
    assert (trained / "runs" / "vq" / "model" / "vqvae" / "config.json").is_file()
    reports = tmp_path / "reports"
    with tarfile.open(results / "reports.tar.gz") as tar:
        tar.extractall(reports, filter="data")
    default_model = _unparts(results, "default_model", tmp_path / "default_model", 1)
    table = (reports / "table.txt").read_text()
    assert "fair: both models made 2 optimizer steps" in table
    for row in ("Autoencoder ceiling", "LDM+CA no refs", "LDM+CA start 0.5", "PSNR", "ground truth as reference (oracle)",
                "another pair's HR as reference", "PSNR (RGB, dB)"):
        assert row in table
    ae = read_json(reports / "autoencoder_eval.json")
    assert ae["images"] >= 1 and ae["border"] == 4
    meta = read_json(default_model / "model_index.json")
    assert meta["kind"] == "ldm-ca"
    assert read_json(default_model / "scheduler" / "scheduler_config.json")["prediction_type"] == "v_prediction"
    assert meta["recipe"]["min_snr_gamma"] == 5.0 and meta["latent_scale"] != 1.0
    unet = load_file(str(default_model / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {str(v.dtype) for v in unet.values() if v.is_floating_point()} == {"torch.float16"}
    from refsr.models import RefSRModel

    model = RefSRModel.from_pretrained(default_model)
    assert model.latent.scale == meta["latent_scale"]

    # from the model above, as the GPU run starts from the shipped one
    # SLOT: the seconds a device command may take; with none left, both caps shrink to their floor
    warm_env = {**{k: v for k, v in env.items() if k != "CA_LEVELS"},  # the default: all
                "INIT_FROM": str(default_model), "WORK": str(tmp_path / "warm"), "SLOT": "1",
                "RESULTS": str(tmp_path / "warm_results"), "PIXEL_LOSS": "1", "PART_MB": "15"}
    stages = "pairs retrieval autoencoder diffusion eval export"
    run = subprocess.run(["bash", "scripts/train_default_model.sh", *stages.split()], cwd=ROOT, env=warm_env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "(cap 0.50 min)" in run.stdout and "cap 0.50 min;" in run.stdout  # the autoencoder's, the diffusion's
    warm = tmp_path / "warm_results"
    with tarfile.open(warm / "reports.tar.gz") as tar:
        tar.extractall(tmp_path / "warm_reports", filter="data")
    table = (tmp_path / "warm_reports" / "table.txt").read_text()
    assert "fair: both models made 2 optimizer steps" in table and "as shipped" in table
    after = RefSRModel.from_pretrained(_unparts(warm, "default_model", tmp_path / "warm_model", 15))
    recipe = after.recipe
    assert recipe["init_from"] == str(default_model) and recipe["max_strength"] == 0.5
    assert recipe["lr_start_fraction"] == 0.5 and recipe["self_ref_fraction"] == 0.5
    assert recipe["pixel_loss_weight"] == 1.0 and "pixel_loss_weight" not in model.recipe  # PIXEL_LOSS, off by default
    assert (recipe["recommended_steps"], recipe["recommended_draws"], recipe["recommended_start_strength"],
            recipe["recommended_color_fix"], recipe["recommended_mirror"]) == (4, 4, 0.5, "luma", True)
    chosen = read_json(tmp_path / "warm" / "eval" / "levels_val.json")  # on the validation pairs, among 2-7
    assert chosen["images"] == 2 and sorted(chosen["psnr_y"]) == ["2", "3", "4", "5", "6", "7"]
    assert recipe["recommended_color_fix_levels"] == chosen["best"] == int(max(chosen["psnr_y"], key=chosen["psnr_y"].get))
    assert f"luma {chosen['best']} levels" in table
    assert after.prediction_type == "v_prediction" and after.latent.scale == model.latent.scale
    enc_before, enc_after = model.vqvae.encoder.state_dict(), after.vqvae.encoder.state_dict()
    assert all(torch.equal(enc_before[k], enc_after[k]) for k in enc_before)  # decoder-only: the same latents
    # CA_LEVELS model (the scratch run): the config's positions; all (the default): every position,
    # so the warm run added position 2 to the trained branch
    assert model.ref_branch.levels == [0, 1] and after.ref_branch.levels == [0, 1, 2]


def test_handback_brings_home_the_logs_of_a_training_that_failed(tmp_path):
    """The first GPU command ends with handback: if a training died, what there is still comes back
    (its log, the models that were made), so the next session can see why."""
    work, results = tmp_path / "work", tmp_path / "results"
    vq = work / "runs" / "vq"
    (vq / "model" / "vqvae").mkdir(parents=True)
    (vq / "model" / "vqvae" / "config.json").write_text("{}\n")
    (vq / "eval.json").write_text('{"images": 3}\n')
    (work / "train_ldm-ca.log").write_text("RuntimeError: CUDA error: out of memory\n")
    env = {**os.environ, "WORK": str(work), "RESULTS": str(results), "PYTHON": sys.executable, "PART_MB": "1",
           "REFSR": f"{sys.executable} -m refsr_cli"}
    run = subprocess.run(["bash", "scripts/train_default_model.sh", "handback"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{work}/runs/ldm/model: no model" in run.stdout and f"{work}/runs/ldm-ca/model: no model" in run.stdout
    back = _unparts(results, "trained", tmp_path / "back", 1)
    assert (back / "train_ldm-ca.log").read_text() == "RuntimeError: CUDA error: out of memory\n"
    assert (back / "runs" / "vq" / "model" / "vqvae" / "config.json").is_file()
    assert (back / "runs" / "vq" / "eval.json").read_text() == '{"images": 3}\n'
