"""RefSRModel and the reference branch: zero-init equality, gradients, cached K/V, masks,
save/load, --init-from a diffusers folder, config errors. Tiny random models on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from refsr.errors import InputError
from refsr.models import RefSRModel, load_config

MICRO = {
    "scale": 4, "patch_size": 32, "ref_size": 32, "max_refs": 2,
    "vqvae": {"block_out_channels": [8, 8, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
              "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "latent_channels": 3,
              "num_vq_embeddings": 32, "norm_num_groups": 4},
    "unet": {"block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "attention_head_dim": 8,
             "norm_num_groups": 4},
    "ref_branch": {"ca_levels": [0, 1, 2], "head_dim": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(model, b=3, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p, s = model.patch_size, model.ref_size
    lr = torch.rand(b, 3, p // 4, p // 4, generator=g) * 2 - 1
    noisy = torch.randn(b, 3, p // 4, p // 4, generator=g)
    refs = torch.rand(b, r, 3, s, s, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (b,), generator=g)
    return noisy, t, lr, refs


def _randomise_out(model, std=0.1):
    torch.manual_seed(1)
    for level in model.ref_branch.attn.values():
        torch.nn.init.normal_(level.to_out.weight, std=std)
        torch.nn.init.normal_(level.to_out.bias, std=std)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return RefSRModel.from_config("tiny", kind="ldm-ca").eval()


def test_zero_projection_gives_exactly_the_unet_output(tiny):
    noisy, t, lr, refs = _inputs(tiny)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    with torch.no_grad():
        plain = tiny.unet(torch.cat([noisy, lr], 1), t).sample
        ctx = tiny.encode_references(refs, mask)
        out = tiny(noisy, t, lr, tiny.encode_lr(torch.nn.functional.interpolate(lr, scale_factor=4)), ctx)
        none = tiny(noisy, t, lr, None, tiny.encode_references(refs[:, :0]))
    assert torch.equal(out, plain)
    assert torch.equal(none, plain)  # zero references: the plain U-Net


def test_cached_keys_values_equal_recomputation_and_padding_is_ignored():
    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca").eval()
    _randomise_out(model)
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    mask = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        ctx = model.encode_references(refs, mask)
        cached = [model(noisy, t + k, lr, None, ctx) for k in range(2)]
        fresh = [model(noisy, t + k, lr, None, model.encode_references(refs, mask)) for k in range(2)]
        single = model(noisy[:1], t[:1], lr[:1], None, model.encode_references(refs[:1, :1]))
        plain = model.unet(torch.cat([noisy, lr], 1), t).sample
    for a, b in zip(cached, fresh):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # image 0: one real ref + one padding slot == that ref alone
    torch.testing.assert_close(cached[0][:1], single, atol=1e-5, rtol=1e-5)
    assert (cached[0] - plain).abs().amax() > 1e-3  # the trained-looking branch does act


@pytest.mark.parametrize("aggregation", ["sum", "max", "joint"])
def test_other_aggregations_respect_the_mask(aggregation):
    cfg = json.loads(json.dumps(MICRO))
    cfg["ref_branch"]["aggregation"] = aggregation
    torch.manual_seed(0)
    model = RefSRModel.from_config(cfg, kind="ldm-ca").eval()
    _randomise_out(model)
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    with torch.no_grad():
        padded = model(noisy, t, lr, None, model.encode_references(refs, torch.tensor([[True, False], [False, False]])))
        alone = model(noisy[:1], t[:1], lr[:1], None, model.encode_references(refs[:1, :1]))
        plain = model.unet(torch.cat([noisy, lr], 1), t).sample
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(padded[1], plain[1])  # no real reference: untouched


def _level_as_written(level, h, f_lr, ref_feats, mask, aggregation):
    """The cross-attention level computed straight from its definition (1x1 convs on the
    concatenation, one attention per reference): the reference for the split, cached form."""
    import torch.nn.functional as F

    from refsr.models.ref_branch import _aggregate

    b, c, hh, ww = h.shape
    r = mask.shape[1]
    heads = lambda x: x.flatten(2).transpose(1, 2).reshape(x.shape[0], -1, level.heads, level.head_dim).transpose(1, 2)  # noqa: E731
    q = heads(level.to_q(torch.cat([level.norm_h(h), level.norm_lr(f_lr)], dim=1)))
    x = level.norm_ref(ref_feats)
    k, v = heads(level.to_k(x)).reshape(b, r, level.heads, -1, level.head_dim), heads(level.to_v(x)).reshape(b, r, level.heads, -1, level.head_dim)
    if aggregation == "joint":
        kj, vj = (t.transpose(1, 2).reshape(b, level.heads, -1, level.head_dim) for t in (k, v))
        tok = mask[:, :, None].expand(b, r, k.shape[3]).reshape(b, 1, 1, -1) | ~mask.any(1).view(b, 1, 1, 1)
        o = F.scaled_dot_product_attention(q, kj, vj, attn_mask=tok)
    else:
        o = torch.stack([F.scaled_dot_product_attention(q, k[:, j], v[:, j]) for j in range(r)], dim=1)
        o = _aggregate(o, mask, aggregation)
    o = o.transpose(1, 2).reshape(b, hh * ww, -1).transpose(1, 2).reshape(b, -1, hh, ww)
    return level.to_out(o) * mask.any(1).float().view(b, 1, 1, 1)


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max", "joint"])
def test_split_query_and_batched_references_equal_the_definition(aggregation):
    """q = W_h GN(h) + (W_lr GN(f_LR) + b) with the LR part cached, K/V cached contiguous,
    all references in one call: the same update as the written-out formula, within 1e-5."""
    from refsr.models.ref_branch import CrossAttentionLevel

    torch.manual_seed(0)
    level = CrossAttentionLevel(dec_channels=32, feat_channels=16, head_dim=8, norm_groups=4).eval()
    for p in level.parameters():
        torch.nn.init.normal_(p, std=0.2)
    b, r = 3, 4
    h, f_lr = torch.randn(b, 32, 6, 5), torch.randn(b, 16, 6, 5)
    ref_feats = torch.randn(b * r, 16, 4, 4)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False], [True, True, True, True]])
    with torch.no_grad():
        keys, values = level.keys_values(ref_feats, b)
        out = level(h, level.query_lr(f_lr), keys, values, mask, aggregation)
        want = _level_as_written(level, h, f_lr, ref_feats, mask, aggregation)
    assert keys.is_contiguous() and values.is_contiguous() and keys.shape == (b, r, level.heads, 16, 8)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # no real reference: no update


def test_a_frozen_unets_channels_last_features_train_the_level_without_a_crash():
    """--freeze-unet on the CPU: the decoder features need no gradient and can come channels-last
    while the level's norms train. GroupNorm's CPU backward crashes the process on exactly that in
    torch 2.11 and 2.13 (a segmentation fault); the level gives its norm a contiguous copy, so the
    gradients are those of contiguous features."""
    from refsr.models.ref_branch import CrossAttentionLevel

    torch.manual_seed(0)
    level = CrossAttentionLevel(dec_channels=32, feat_channels=16, head_dim=8, norm_groups=4)
    for p in level.parameters():
        torch.nn.init.normal_(p, std=0.2)
    h, f_lr, ref_feats = torch.randn(2, 32, 6, 5), torch.randn(2, 16, 6, 5), torch.randn(2, 16, 4, 4)
    mask = torch.tensor([[True], [True]])
    into_norm = []
    level.norm_h.register_forward_pre_hook(lambda _, args: into_norm.append(args[0].is_contiguous()))

    def grads(h):
        level.zero_grad()
        keys, values = level.keys_values(ref_feats, 2)
        level(h, level.query_lr(f_lr), keys, values, mask).square().sum().backward()
        return {n: p.grad.clone() for n, p in level.named_parameters()}

    want = grads(h)
    got = grads(h.to(memory_format=torch.channels_last))  # crashed here before the guard (torch 2.11, 2.13)
    assert into_norm == [True, True]
    assert want.keys() == got.keys() and want["norm_h.weight"].abs().sum() > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)


def test_a_new_level_attends_where_the_reference_looks_like_the_lr():
    """The matching start: with reference features that are the LR's own features moved to
    other positions, every query's strongest key is the moved copy of its own position (before
    any training), the decoder features do not enter the query yet, and the update is zero."""
    from refsr.models.ref_branch import CrossAttentionLevel

    torch.manual_seed(0)
    level = CrossAttentionLevel(dec_channels=32, feat_channels=64, head_dim=16, norm_groups=8).eval()
    f_lr = torch.randn(1, 64, 8, 8)
    perm = torch.randperm(64)
    ref = f_lr.flatten(2)[:, :, perm].reshape(1, 64, 8, 8)  # ref token j = LR token perm[j]
    with torch.no_grad():
        q = level._heads(level.query_lr(f_lr).flatten(1, 2))  # (1, heads, 64, head_dim)
        keys, values = level.keys_values(ref, 1)
        logits = (q @ keys[:, 0].transpose(-1, -2)).sum(1)  # summed over heads: (1, 64 queries, 64 keys)
        h = torch.randn(1, 32, 8, 8)
        out = level(h, level.query_lr(f_lr), keys, values, torch.tensor([[True]]))
    assert torch.equal(logits[0].argmax(-1), torch.argsort(perm))  # query i -> the key holding LR token i
    assert torch.equal(level.to_q.weight[:, :32], torch.zeros_like(level.to_q.weight[:, :32]))  # h: no say yet
    assert torch.equal(out, torch.zeros_like(h))


def test_ca_levels_all_means_every_decoder_position_of_the_unet():
    """``ca_levels="all"``: positions 0..n for a U-Net of n up blocks, for a new branch and when
    a trained branch grows (its trained positions kept); any other word is an error."""
    from refsr.models.ref_branch import branch_for, with_levels

    torch.manual_seed(0)
    unet = RefSRModel.from_config(MICRO, kind="ldm").unet  # 2 up blocks: positions 0, 1, 2
    new = branch_for(unet, ca_levels="all", head_dim=8)
    assert new.levels == [0, 1, 2] and new.config.ca_levels == [0, 1, 2]  # saved as a list
    old = branch_for(unet, ca_levels=[1], head_dim=8)
    grown = with_levels(old, "all")
    assert grown.levels == [0, 1, 2]
    assert torch.equal(grown.attn["1"].to_q.weight, old.attn["1"].to_q.weight)
    with pytest.raises(ValueError, match="neither a list of positions nor 'all'"):
        branch_for(unet, ca_levels="every", head_dim=8)


def test_no_real_reference_never_enters_the_hooked_forward(monkeypatch):
    """The context says on the host that no image has a reference: plain ``unet(...)``."""
    import refsr.models.ldm as ldm

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca").eval()
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    with torch.no_grad():
        ctx = model.encode_references(refs, torch.zeros(2, 2, dtype=torch.bool))
        assert ctx.any_real is False and model.encode_references(refs).any_real is True
        monkeypatch.setattr(ldm, "unet_forward", lambda *a, **k: pytest.fail("hooked forward without references"))
        out = model(noisy, t, lr, None, ctx)
    assert torch.equal(out, model.unet(torch.cat([noisy, lr], 1), t).sample)


def test_training_steps_reach_every_branch_parameter():
    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca")
    branch = model.ref_branch
    opt = torch.optim.Adam([p for p in branch.parameters()], lr=1e-2)
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    mask = torch.ones(2, 2, dtype=torch.bool)
    with torch.no_grad():
        before = model(noisy, t, lr, None, model.encode_references(refs, mask))
    touched = {n: False for n, _ in branch.named_parameters()}
    for step in range(3):
        opt.zero_grad()
        out = model(noisy, t, lr, None, model.encode_references(refs, mask))
        ((out - noisy) ** 2).mean().backward()
        grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in branch.named_parameters()}
        if step == 0:  # only the zero output projections can move first
            assert all(grads[n] for n in grads if n.startswith("attn.") and ".to_out." in n)
            assert not any(grads[n] for n in grads if n.startswith("e_ref."))
        touched = {n: touched[n] or grads[n] for n in touched}
        opt.step()
    assert all(touched.values()), [n for n, v in touched.items() if not v][:5]
    with torch.no_grad():
        after = model(noisy, t, lr, None, model.encode_references(refs, mask))
    assert (after - before).abs().amax() > 1e-4


def test_export_reload_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca").eval()
    _randomise_out(model)
    model.save_pretrained(tmp_path / "model")
    again = RefSRModel.from_pretrained(tmp_path / "model").eval()
    assert again.kind == "ldm-ca" and again.patch_size == 32 and again.ref_size == 32
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["_class_name"] == "RefSRPipeline"
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a = model(noisy, t, lr, None, model.encode_references(refs))
        b = again(noisy, t, lr, None, again.encode_references(refs))
        assert torch.equal(model.decode(model.encode(hr)), again.decode(again.encode(hr)))
    assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model_index.json", "ref_branch", "scheduler", "unet", "vqvae"]


def as_old_layout(folder, drop=()):
    """Turn a saved model folder into the layout before model_index.json: ``refsr.json`` (format
    refsr.model/1, without the keys in ``drop``) and a ref_branch config holding the whole U-Net
    config (``unet_config``) instead of its encoder part."""
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").unlink()
    meta = {"format": "refsr.model/1", "latent_channels": 3,
            **{k: index[k] for k in ("kind", "scale", "patch_size", "ref_size", "max_refs", "latent_scale",
                                     "decode_quantized", "recipe") if k not in drop}}
    (folder / "refsr.json").write_text(json.dumps(meta))
    if (folder / "ref_branch").is_dir():
        cfg = json.loads((folder / "ref_branch" / "config.json").read_text())
        cfg.pop("encoder_config")
        cfg["unet_config"] = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items()
                              if not k.startswith("_")}
        (folder / "ref_branch" / "config.json").write_text(json.dumps(cfg))


def _same_model_outputs(a, b):
    noisy, t, lr, refs = _inputs(a, b=2, r=2)
    hr = torch.rand(2, 3, a.patch_size, a.patch_size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a(noisy, t, lr, None, a.encode_references(refs)), b(noisy, t, lr, None, b.encode_references(refs)))
        assert torch.equal(a.decode(a.encode(hr)), b.decode(b.encode(hr)))


@pytest.mark.parametrize("kind", ["ldm", "ldm-ca"])
def test_pipeline_folder_save_reload_same_outputs(tmp_path, kind):
    """save_pretrained writes a RefSRPipeline folder (model_index.json); RefSRModel,
    RefSRPipeline and DiffusionPipeline all load it, with the latent settings, recipe and
    prediction type kept and the same outputs."""
    from diffusers import DiffusionPipeline

    from refsr.models import RefSRPipeline
    from refsr.models.autoencoder import LatentSpec

    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind=kind).eval()
    if kind == "ldm-ca":
        _randomise_out(model)
    model.latent, model.recipe = LatentSpec(2.5, False), {"min_snr_gamma": 5.0}
    model.scheduler_config["prediction_type"] = "v_prediction"
    model.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "RefSRPipeline" and index["kind"] == kind
    assert index["vqvae"] == ["diffusers", "VQModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["ref_branch"] == (["refsr.models.ref_branch", "RefBranch"] if kind == "ldm-ca" else [None, None])
    assert (index["latent_scale"], index["decode_quantized"], index["recipe"]) == (2.5, False, {"min_snr_gamma": 5.0})
    assert not (tmp_path / "m" / "refsr.json").exists()
    assert (tmp_path / "m" / "ref_branch").is_dir() == (kind == "ldm-ca")
    pipes = [RefSRPipeline.from_pretrained(tmp_path / "m"), DiffusionPipeline.from_pretrained(tmp_path / "m")]
    assert all(type(p) is RefSRPipeline for p in pipes)
    for again in [RefSRModel.from_pretrained(tmp_path / "m")] + [p.to_model() for p in pipes]:
        again.eval()
        assert (again.kind, again.patch_size, again.ref_size, again.max_refs) == (kind, 32, 32, 2)
        assert (again.latent.scale, again.latent.decode_quantized) == (2.5, False)
        assert again.recipe == {"min_snr_gamma": 5.0} and again.prediction_type == "v_prediction"
        _same_model_outputs(model, again)


def test_old_layout_folder_loads_with_the_same_outputs(tmp_path):
    """A folder of the layout before model_index.json (refsr.json; ref_branch config with the
    whole U-Net config) loads, gives the same outputs and re-saves in the new layout."""
    torch.manual_seed(0)
    model = RefSRModel.from_config(MICRO, kind="ldm-ca").eval()
    _randomise_out(model)
    from refsr.models.autoencoder import LatentSpec

    model.latent = LatentSpec(0.5, False)
    model.save_pretrained(tmp_path / "old")
    as_old_layout(tmp_path / "old")
    assert "unet_config" in json.loads((tmp_path / "old" / "ref_branch" / "config.json").read_text())
    old = RefSRModel.from_pretrained(tmp_path / "old").eval()
    assert (old.latent.scale, old.latent.decode_quantized) == (0.5, False)
    _same_model_outputs(model, old)
    old.save_pretrained(tmp_path / "new")
    cfg = json.loads((tmp_path / "new" / "ref_branch" / "config.json").read_text())
    assert "unet_config" not in cfg and cfg["encoder_config"]["block_out_channels"] == [16, 32]
    assert "up_block_types" not in cfg["encoder_config"] and "sample_size" not in cfg["encoder_config"]
    _same_model_outputs(model, RefSRModel.from_pretrained(tmp_path / "new").eval())


def test_ref_branch_encoder_is_the_unets_encoder_without_timestep():
    """UNetEncoder built from the encoder config has the U-Net's encoder modules (minus the
    time projections): its state dict loads the U-Net's strictly and gives what a deep copy of
    the U-Net's encoder with the projections removed gives (the construction before)."""
    import copy

    from diffusers import UNet2DModel

    from refsr.models.ref_branch import UNetEncoder, encoder_config

    torch.manual_seed(0)
    unet = UNet2DModel(**load_config(MICRO)["unet"])
    old = torch.nn.Module()
    old.conv_in, old.down_blocks, old.mid_block = (copy.deepcopy(m) for m in (unet.conv_in, unet.down_blocks, unet.mid_block))
    for sub in old.modules():
        if hasattr(sub, "time_emb_proj"):
            sub.time_emb_proj = None
    new = UNetEncoder(encoder_config(unet.config))
    new.load_state_dict(old.state_dict(), strict=True)
    shown = lambda m: [line for line in repr(m).splitlines() if "(time_emb_proj): None" not in line]  # noqa: E731
    assert shown(new.down_blocks) == shown(old.down_blocks) and shown(new.mid_block) == shown(old.mid_block)
    x = torch.randn(2, 6, 8, 8)
    old.forward = lambda x: UNetEncoder.forward(old, x)
    with torch.no_grad():
        a, b = new(x), old.forward(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_model_loads_as_before(tmp_path):
    """refsr/weights/default (old layout, left as shipped) loads every stored tensor, and
    re-saved in the new layout gives the same outputs."""
    from pathlib import Path

    from safetensors.torch import load_file

    from refsr.sample.loading import default_model_path

    folder = default_model_path()
    model = RefSRModel.from_pretrained(folder).eval()
    stored = load_file(str(Path(folder) / "ref_branch" / "diffusion_pytorch_model.safetensors"))
    state = model.ref_branch.state_dict()
    assert state.keys() == stored.keys() and all(torch.equal(state[k], stored[k].float()) for k in stored)
    model.save_pretrained(tmp_path / "m")
    _same_model_outputs(model, RefSRModel.from_pretrained(tmp_path / "m").eval())


def test_init_from_a_diffusers_ldm_sr_folder(tmp_path):
    from diffusers import DDIMScheduler

    from refsr.train.diffusion import build_model

    torch.manual_seed(0)
    base = RefSRModel.from_config(MICRO, kind="ldm")
    folder = tmp_path / "ldm-sr"
    base.vqvae.save_pretrained(folder / "vqvae")
    base.unet.save_pretrained(folder / "unet")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "LDMSuperResolutionPipeline"}')

    plain = RefSRModel.from_pretrained(folder)
    assert plain.kind == "ldm" and plain.ref_branch is None and plain.scale == 4
    model = build_model(MICRO, "ldm-ca", init_from=folder).eval()
    model.save_pretrained(tmp_path / "exported")  # configs loaded from disk must stay serialisable
    assert torch.equal(model.ref_branch.e_lr.conv_in.weight, base.unet.conv_in.weight)
    assert torch.equal(model.ref_branch.e_ref.down_blocks[0].resnets[0].conv1.weight,
                       base.unet.down_blocks[0].resnets[0].conv1.weight)
    noisy, t, lr, refs = _inputs(model, b=2, r=2)
    with torch.no_grad():
        out = model(noisy, t, lr, None, model.encode_references(refs))
        loaded = model.unet(torch.cat([noisy, lr], 1), t).sample
        ref = base.unet(torch.cat([noisy, lr], 1), t).sample
    assert torch.equal(out, loaded)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # same weights, reloaded


def test_init_from_a_refsr_ldm_ca_folder_keeps_its_trained_reference_branch(tmp_path):
    """Fine-tuning a shipped ldm-ca model continues its reference branch (a fresh branch would
    start again from the U-Net's encoder and throw the trained cross-attention away)."""
    from refsr.train.diffusion import build_model

    torch.manual_seed(0)
    trained = RefSRModel.from_config(MICRO, kind="ldm-ca")
    with torch.no_grad():
        for p in trained.ref_branch.parameters():
            p.add_(torch.randn_like(p))  # unlike anything branch_for() would make
    trained.recipe = {"recommended_start_strength": 0.3}
    trained.save_pretrained(tmp_path / "m")

    model = build_model(MICRO, "ldm-ca", init_from=tmp_path / "m")
    stored, state = trained.ref_branch.state_dict(), model.ref_branch.state_dict()
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in stored)
    assert model.recipe == {"init_from": str(tmp_path / "m"), "base_recipe": {"recommended_start_strength": 0.3}}
    assert build_model(MICRO, "ldm", init_from=tmp_path / "m").ref_branch is None


def test_missing_part_of_a_model_folder_is_named(tmp_path):
    (tmp_path / "m" / "vqvae").mkdir(parents=True)
    (tmp_path / "m" / "vqvae" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="unet/config.json is missing"):
        RefSRModel.from_pretrained(tmp_path / "m")


def test_config_files_json_and_yaml_and_unknown_keys(tmp_path):
    cfg = load_config("paper")
    assert cfg["unet"]["block_out_channels"] == [160, 320, 320, 640] and cfg["vqvae"]["num_vq_embeddings"] == 8192
    assert cfg["unet"]["in_channels"] == 6 and cfg["scheduler"]["beta_end"] == 0.0155
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(MICRO))
    assert load_config(tmp_path / "c.yaml")["unet"]["block_out_channels"] == [16, 32]
    bad = json.loads(json.dumps(MICRO))
    bad["unet"]["chanels"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"bad.json: unet: unknown key 'chanels'"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(InputError, match="neither a file nor one of"):
        load_config("huge")


def test_vq_of_the_wrong_latent_size_is_refused(tmp_path):
    from refsr.models.autoencoder import build_vqvae
    from refsr.train.diffusion import build_model

    vq = build_vqvae({**MICRO["vqvae"], "latent_channels": 4})
    vq.save_pretrained(tmp_path / "vq" / "model" / "vqvae")
    with pytest.raises(InputError, match="4 latent channels but the U-Net expects 6"):
        build_model(MICRO, "ldm", vqvae_dir=tmp_path / "vq")
