"""The reference branch of ``ldm-ca``: E_LR, E_Ref and cross-attention in the U-Net decoder.

Layout (DESIGN.md, section Model; departures in docs/architecture.md):

* ``E_LR`` and ``E_Ref`` are the U-Net's ``conv_in``, ``down_blocks`` and ``mid_block``
  (built from the encoder part of its config) with their own weights and no timestep input
  (no resnet has a ``time_emb_proj``, so ``temb=None`` passes through). Their input has the
  U-Net's layout: ``[VQ latent || image at latent size]`` (latent + 3 channels), so the
  copies can start from a pretrained U-Net's weights exactly.
* Each encoder yields one feature map per resolution of the U-Net (resolution ``r`` is
  the latent size divided by ``2**r``): the last down-block output before that block's
  downsampler, and the mid block's output at the lowest resolution.
* At each chosen decoder position ``i`` (``ca_levels``: the features entering up block
  ``i``, i.e. after up block ``i - 1``; ``i = 0`` is the mid block's output and
  ``i = len(up_blocks)`` the output of the last up block) the decoder features ``h`` attend to
  the references: query from ``[norm(h) || f_LR]`` (1x1 projection), key/value from each
  reference's features at the same resolution, one ``scaled_dot_product_attention`` per
  reference, aggregation over the real references, zero-initialised output projection,
  added to ``h``.

Cost at sampling time: everything that does not depend on the timestep is computed once
per image (or tile). The query projection is linear in its concatenated input, so
``W_q [GN(h) || GN(f_LR)] + b = W_h GN(h) + (W_lr GN(f_LR) + b)``: the bracket is kept in
:class:`LRContext`; keys and values are kept contiguous in the layout
``scaled_dot_product_attention`` takes, and all references of a batch go through one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import OptionError

AGGREGATIONS = ("mean", "sum", "max", "joint")


@dataclass
class LRContext:
    """The LR side of the queries, computed once per LR image (or tile) from E_LR's features.

    Attributes:
        queries (`dict[int, torch.Tensor]`): decoder position i -> (B, H_i, W_i, inner),
            channels last: ``W_lr GN(f_LR) + b_q``, the timestep-free part of the query.
    """

    queries: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class RefContext:
    """Per-level keys and values of the references, computed once per image.

    Attributes:
        keys (`dict[int, torch.Tensor]`): up-block index -> (B, R, heads, N, head_dim),
            contiguous (so ``flatten(0, 1)`` is the (B*R, heads, N, head_dim) view SDPA takes).
        values (`dict[int, torch.Tensor]`): same layout as ``keys``.
        mask (`torch.Tensor`): (B, R) bool, True where the reference is real.
        any_real (`bool`, defaults to True): some image has a real reference; read on the
            host once when the context is made, so a denoising step never waits on the device.
    """

    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    mask: torch.Tensor
    any_real: bool = True

    @property
    def has_refs(self) -> torch.Tensor:
        """(B,) bool: the images that have at least one real reference."""
        return self.mask.any(dim=1)


# The ``UNet2DModel`` keywords that its ``conv_in``, ``down_blocks`` and ``mid_block`` depend on:
# all a reference branch stores of the U-Net it was built for (``RefBranch.encoder_config``).
ENCODER_KEYS = ("in_channels", "block_out_channels", "down_block_types", "layers_per_block", "norm_num_groups",
                "norm_eps", "act_fn", "attention_head_dim", "attn_norm_num_groups", "downsample_padding",
                "downsample_type", "dropout", "add_attention", "mid_block_type", "mid_block_scale_factor",
                "resnet_time_scale_shift")


def encoder_config(unet_config) -> dict:
    """The encoder part (:data:`ENCODER_KEYS`, JSON values) of a ``UNet2DModel`` config; keys
    it does not have take ``UNet2DModel``'s defaults."""
    import inspect
    import json

    from diffusers import UNet2DModel

    defaults = {"mid_block_type": "UNetMidBlock2D",  # the block of versions without the keyword
                **{k: p.default for k, p in inspect.signature(UNet2DModel.__init__).parameters.items()}}
    cfg = {k: dict(unet_config).get(k, defaults[k]) for k in ENCODER_KEYS}
    return json.loads(json.dumps(cfg, default=list))


def level_resolutions(num_levels: int) -> list[int]:
    """Resolution index of each decoder position ``i`` in 0..n (the features entering up
    block ``i``; ``n`` = after the last one): ``max(n - 1 - i, 0)``."""
    return [max(num_levels - 1 - i, 0) for i in range(num_levels + 1)]


def level_channels(channels: list[int]) -> list[int]:
    """Decoder channels at each position 0..n for a U-Net with ``block_out_channels``."""
    n = len(channels)
    return [channels[-1]] + [channels[n - i] for i in range(1, n)] + [channels[0]]


class UNetEncoder(nn.Module):
    """A U-Net's encoder without timestep input: ``conv_in``, ``down_blocks``, ``mid_block`` built
    as ``UNet2DModel.__init__`` builds them from ``config`` (:func:`encoder_config`), except that
    every resnet has no ``time_emb_proj`` (``temb_channels=None``), so it runs with ``temb=None``.
    Its parameter names are the U-Net's, so a U-Net's encoder weights load into it."""

    def __init__(self, config: dict):
        super().__init__()
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block

        c = config
        channels, head_dim = list(c["block_out_channels"]), c["attention_head_dim"]
        self.conv_in = nn.Conv2d(c["in_channels"], channels[0], kernel_size=3, padding=(1, 1))
        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(c["down_block_types"]):
            self.down_blocks.append(get_down_block(
                block_type, num_layers=c["layers_per_block"], in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i], temb_channels=None, add_downsample=i < len(channels) - 1,
                resnet_eps=c["norm_eps"], resnet_act_fn=c["act_fn"], resnet_groups=c["norm_num_groups"],
                attention_head_dim=head_dim if head_dim is not None else channels[i],
                downsample_padding=c["downsample_padding"], resnet_time_scale_shift=c["resnet_time_scale_shift"],
                downsample_type=c["downsample_type"], dropout=c["dropout"]))
        self.mid_block = None
        if c["mid_block_type"] is not None:
            self.mid_block = UNetMidBlock2D(
                in_channels=channels[-1], temb_channels=None, dropout=c["dropout"], resnet_eps=c["norm_eps"],
                resnet_act_fn=c["act_fn"], output_scale_factor=c["mid_block_scale_factor"],
                resnet_time_scale_shift=c["resnet_time_scale_shift"],
                attention_head_dim=head_dim if head_dim is not None else channels[-1],
                resnet_groups=c["norm_num_groups"], attn_groups=c["attn_norm_num_groups"],
                add_attention=c["add_attention"])

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, latent+3, h, w) -> {resolution index r: (B, C_r, h/2^r, w/2^r)}."""
        h = self.conv_in(x)
        feats: dict[int, torch.Tensor] = {}
        for r, block in enumerate(self.down_blocks):
            # every output but the downsampler's is at resolution r; keep the last one
            h_block, res_samples = block(hidden_states=h, temb=None)
            has_down = getattr(block, "downsamplers", None) is not None
            feats[r] = res_samples[-2] if has_down else h_block
            h = h_block
        if self.mid_block is not None:
            h = self.mid_block(h, None)
        feats[len(self.down_blocks) - 1] = h
        return feats


class CrossAttentionLevel(nn.Module):
    """Cross-attention from decoder features (+ LR features) to reference features.

    Args:
        dec_channels (`int`): channels of the decoder features ``h``.
        feat_channels (`int`): channels of the E_LR / E_Ref features at that resolution.
        head_dim (`int`): channels per attention head.
        norm_groups (`int`): GroupNorm groups.
    """

    def __init__(self, dec_channels: int, feat_channels: int, head_dim: int, norm_groups: int):
        super().__init__()
        inner = max(head_dim, (dec_channels // head_dim) * head_dim)
        self.heads, self.head_dim = inner // head_dim, head_dim
        self.norm_h = nn.GroupNorm(_groups(norm_groups, dec_channels), dec_channels, eps=1e-6)
        self.norm_lr = nn.GroupNorm(_groups(norm_groups, feat_channels), feat_channels, eps=1e-6)
        self.norm_ref = nn.GroupNorm(_groups(norm_groups, feat_channels), feat_channels, eps=1e-6)
        self.to_q = nn.Conv2d(dec_channels + feat_channels, inner, 1)
        self.to_k = nn.Conv2d(feat_channels, inner, 1)
        self.to_v = nn.Conv2d(feat_channels, inner, 1)
        self.to_out = nn.Conv2d(inner, dec_channels, 1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        self.init_matching()

    @torch.no_grad()
    def init_matching(self) -> None:
        """Start attention as matching: the LR part of the query and the key share one projection
        (the decoder part of the query and both biases start at zero), so ``q . k`` is a dot
        product of the LR's and the reference's features in one space, largest where the
        reference looks like the LR there (E_LR and E_Ref start as the same encoder). The output
        projection stays at zero: the model computes what it did without the level until trained."""
        dec = self.norm_h.num_channels
        self.to_q.weight[:, :dec].zero_()
        self.to_q.weight[:, dec:].copy_(self.to_k.weight)
        self.to_q.bias.zero_()
        self.to_k.bias.zero_()

    def _weight(self, conv: nn.Conv2d, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """A 1x1 conv's weight as a (out, in) matrix, input channels ``lo:hi``."""
        return conv.weight.flatten(1)[:, lo:hi]

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, inner) -> (N, heads, L, head_dim), a view (last stride 1, as SDPA wants)."""
        return tokens.unflatten(2, (self.heads, self.head_dim)).transpose(1, 2)

    def query_lr(self, f_lr: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H, W) E_LR features -> (B, H, W, inner): ``W_lr GN(f_LR) + b_q``, the
        timestep-free part of the query (the input channels of ``to_q`` after ``dec_channels``)."""
        dec = self.norm_h.num_channels
        x = _norm(self.norm_lr, f_lr).permute(0, 2, 3, 1)
        return F.linear(x, self._weight(self.to_q, dec), self.to_q.bias)

    def keys_values(self, ref_feats: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*R, C, s, s) E_Ref features -> keys, values (B, R, heads, s*s, head_dim), contiguous."""
        x = _norm(self.norm_ref, ref_feats).flatten(2).transpose(1, 2)
        k = self._heads(F.linear(x, self._weight(self.to_k), self.to_k.bias)).contiguous()
        v = self._heads(F.linear(x, self._weight(self.to_v), self.to_v.bias)).contiguous()
        return k.unflatten(0, (batch, -1)), v.unflatten(0, (batch, -1))

    def forward(self, h, q_lr, keys, values, mask, aggregation: str = "mean") -> torch.Tensor:
        """Return the update to add to ``h``: (B, C, H, W), zero where ``mask`` has no True.

        Args:
            h: (B, C, H, W) decoder features. q_lr: (B, H, W, inner) from :meth:`query_lr`.
            keys, values: (B, R, heads, N, head_dim). mask: (B, R) bool.
        """
        b, c, height, width = h.shape
        # 1. q = W_h GN(h) + q_lr (the LR part was computed once per image)
        hn = _norm(self.norm_h, h).flatten(2).transpose(1, 2)
        w_h = self._weight(self.to_q, 0, c).T.expand(b, -1, -1)
        q = self._heads(torch.baddbmm(q_lr.reshape(b, height * width, -1), hn, w_h))
        r = keys.shape[1]
        if aggregation == "joint":  # one softmax over the tokens of every real reference
            k = keys.transpose(1, 2).reshape(b, self.heads, -1, self.head_dim)
            v = values.transpose(1, 2).reshape(b, self.heads, -1, self.head_dim)
            tok_mask = mask[:, :, None].expand(b, r, keys.shape[3]).reshape(b, 1, 1, -1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=tok_mask | ~mask.any(1).view(b, 1, 1, 1))
        else:  # 2. every reference in one call (folded into the batch), then aggregate
            qr = q[:, None].expand(b, r, *q.shape[1:]).reshape(b * r, *q.shape[1:])
            o = F.scaled_dot_product_attention(qr, keys.flatten(0, 1), values.flatten(0, 1))
            o = _aggregate(o.unflatten(0, (b, r)), mask, aggregation)
        # 3. output projection on (B, L, inner) tokens, gated by "has a real reference"
        out = F.linear(o.transpose(1, 2).flatten(2), self._weight(self.to_out), self.to_out.bias)
        gate = mask.any(dim=1).to(out.dtype).view(b, 1, 1)
        return (out * gate).transpose(1, 2).reshape(b, c, height, width)


def _norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, with one guard: on the CPU, where ``x`` needs no gradient but ``norm``'s weights
    train and ``x`` is not contiguous (channels-last decoder features of a frozen U-Net, as
    ``--freeze-unet`` trains), ``x`` is made contiguous first. The CPU backward of GroupNorm
    crashes the process (segmentation fault) on that combination in torch 2.11 and 2.13 (fixed
    by 2.14). Sampling (no gradient) and GPUs are untouched."""
    if (x.device.type == "cpu" and torch.is_grad_enabled() and not x.requires_grad and norm.weight.requires_grad
            and not x.is_contiguous()):
        x = x.contiguous()
    return norm(x)


def _groups(groups: int, channels: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _aggregate(o: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Aggregate per-reference outputs (B, R, ...) over the real references (mask (B, R))."""
    m = mask.view(*mask.shape, *([1] * (o.dim() - 2))).to(o.dtype)
    if mode == "max":
        filled = o.masked_fill(m == 0, torch.finfo(o.dtype).min)
        return torch.where(mask.any(1).view(-1, *([1] * (o.dim() - 2))), filled.amax(dim=1), torch.zeros_like(o[:, 0]))
    total = (o * m).sum(dim=1)
    if mode == "sum":
        return total
    return total / m.sum(dim=1).clamp(min=1.0)


class RefBranch(ModelMixin, ConfigMixin):
    """E_LR, E_Ref and the decoder cross-attention levels of ``ldm-ca``.

    Args:
        encoder_config (`dict`): the encoder part of the ``UNet2DModel`` config the branch is
            built for (:func:`encoder_config`: the keywords ``conv_in``, the down blocks and the
            mid block depend on).
        ca_levels (`list[int]`, defaults to ``[0, 1]``): decoder positions with
            cross-attention (0 = entering up block 0, at the lowest resolution; ``n`` =
            after the last up block).
        head_dim (`int`, defaults to 32): channels per attention head.
        aggregation (`str`, defaults to ``"mean"``): one of ``mean``, ``sum``, ``max``,
            ``joint`` (one softmax over all references' tokens: attention-weighted).

    Folders written before the encoder config (their ``config.json`` holds the whole U-Net
    config as ``unet_config``) load as well: :meth:`extract_init_dict` keeps its encoder part.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, encoder_config: dict, ca_levels: list | None = None, head_dim: int = 32, aggregation: str = "mean"):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        channels = list(encoder_config["block_out_channels"])
        n = len(channels)
        levels = list(range(min(2, n))) if ca_levels is None else [int(i) for i in ca_levels]
        for i in levels:
            if not 0 <= i <= n:
                raise OptionError("ca_levels", f"position {i} does not exist (the U-Net has {n} up blocks: positions 0..{n})")
        self.levels = sorted(set(levels))
        self.resolution = {i: level_resolutions(n)[i] for i in self.levels}
        self.e_lr = UNetEncoder(encoder_config)
        self.e_ref = UNetEncoder(encoder_config)
        groups = encoder_config["norm_num_groups"]
        self.attn = nn.ModuleDict(
            {
                str(i): CrossAttentionLevel(level_channels(channels)[i], channels[self.resolution[i]], head_dim, groups)
                for i in self.levels
            }
        )

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' ``extract_init_dict``, reading an old config's ``unet_config`` as its
        encoder part."""
        if "unet_config" in config_dict and "encoder_config" not in config_dict:
            config_dict = dict(config_dict)
            config_dict["encoder_config"] = encoder_config(config_dict.pop("unet_config"))
        return super().extract_init_dict(config_dict, **kwargs)

    def init_from_unet(self, unet) -> None:
        """Copy the U-Net's encoder weights into E_LR and E_Ref (the time projections aside)."""
        for enc in (self.e_lr, self.e_ref):
            state = {k: v for k, v in unet.state_dict().items() if k.split(".")[0] in ("conv_in", "down_blocks", "mid_block")}
            missing, unexpected = enc.load_state_dict({k: v for k, v in state.items() if "time_emb_proj" not in k}, strict=False)
            if missing:
                raise ValueError(f"U-Net does not match the reference branch: missing {missing[:3]}")

    def encode_refs(self, ref_inputs: torch.Tensor, mask: torch.Tensor) -> RefContext:
        """E_Ref on the real references, then the keys/values of every level.

        Args:
            ref_inputs: (B, R, latent+3, s, s) VQ latents || images at latent size.
            mask: (B, R) bool.
        """
        b, r = mask.shape
        any_real = bool(mask.any())  # the one host read of the mask
        feats = self.e_ref(ref_inputs[mask]) if any_real else None
        keys, values = {}, {}
        for i in self.levels:
            level = self.attn[str(i)]
            res = self.resolution[i]
            if feats is None:
                s = ref_inputs.shape[-1] // (2**res)
                k = ref_inputs.new_zeros(b, r, level.heads, s * s, level.head_dim)
                keys[i], values[i] = k, k
                continue
            f = feats[res]
            full = f.new_zeros(b * r, *f.shape[1:])
            full[mask.flatten()] = f
            keys[i], values[i] = level.keys_values(full, b)
        return RefContext(keys, values, mask, any_real)

    def encode_lr(self, lr_inputs: torch.Tensor) -> LRContext:
        """E_LR, then the LR part of every level's query.

        Args:
            lr_inputs: (B, latent+3, h, w) VQ latent || upsampled LR at latent size.
        """
        feats = self.e_lr(lr_inputs)
        return LRContext({i: self.attn[str(i)].query_lr(feats[self.resolution[i]]) for i in self.levels})

    def inject(self, i: int, h: torch.Tensor, lr_ctx: LRContext, ref_ctx: RefContext) -> torch.Tensor:
        """``h`` at decoder position ``i`` plus the cross-attention update (``h`` if ``i`` has none)."""
        if i not in self.resolution:
            return h
        q_lr = lr_ctx.queries[i]
        if q_lr.shape[1:3] != h.shape[-2:]:
            raise ValueError(f"LR features {tuple(q_lr.shape[1:3])} do not match decoder features {tuple(h.shape[-2:])}")
        update = self.attn[str(i)](h, q_lr, ref_ctx.keys[i], ref_ctx.values[i], ref_ctx.mask, self.config.aggregation)
        return h + update


def every_level(ca_levels, num_levels: int):
    """``ca_levels`` as given, or every decoder position ``0..num_levels`` for ``"all"``
    (``num_levels``: the U-Net's number of up blocks)."""
    if isinstance(ca_levels, str):
        if ca_levels != "all":
            raise OptionError("ca_levels", f"{ca_levels!r} is neither a list of positions nor 'all'")
        return list(range(num_levels + 1))
    return ca_levels


def branch_for(unet, **kwargs) -> RefBranch:
    """A reference branch for ``unet`` (its E_LR / E_Ref start from the U-Net's weights);
    ``ca_levels="all"`` gives it every decoder position."""
    if "ca_levels" in kwargs:
        kwargs["ca_levels"] = every_level(kwargs["ca_levels"], len(unet.config.block_out_channels))
    branch = RefBranch(encoder_config=encoder_config(unet.config), **kwargs)
    branch.init_from_unet(unet)
    return branch


def with_levels(branch: RefBranch, ca_levels) -> RefBranch:
    """``branch`` with cross-attention at ``ca_levels`` (or ``"all"``: every decoder position):
    a superset of its own levels. Its trained weights (E_LR, E_Ref, every level it has) are
    kept; a new level starts with its zero output projection, so the model computes exactly
    what it did until it is trained.

    Raises:
        OptionError: ``ca_levels`` drops a level the branch has (its training would be lost).
    """
    levels = sorted({int(i) for i in every_level(ca_levels, len(branch.config.encoder_config["block_out_channels"]))})
    dropped = sorted(set(branch.levels) - set(levels))
    if dropped:
        raise OptionError("ca_levels", f"{levels} drop the trained position(s) {dropped}: a trained branch can only "
                         f"gain positions (it has {branch.levels})")
    if levels == branch.levels:
        return branch
    grown = RefBranch.from_config(branch.config, ca_levels=levels)
    missing, unexpected = grown.load_state_dict(branch.state_dict(), strict=False)
    new = {f"attn.{i}." for i in set(levels) - set(branch.levels)}
    assert not unexpected and all(any(k.startswith(p) for p in new) for k in missing), (missing, unexpected)
    old = next(branch.parameters())
    grown.to(old.device)
    return grown if old.dtype == torch.float32 else grown.to(old.dtype)
