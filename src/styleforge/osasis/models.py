"""The networks OSASIS runs on, written so the released files load into them without any conversion.

- :class:`DiffAEAutoencoder`: the DiffAE "BeatGANs" autoencoding UNet eps(x_t, t, z_sem) with its semantic
  encoder as ``.encoder`` (FFHQ-256 config by default). Parameter names are those of the official
  ``BeatGANsAutoencModel`` (the ``ema_model.*`` sub-tree of ``ffhq256_autoenc/last.ckpt``), and its forward can
  mix two semantic codes block by block (paper §3.2, Eq. 27; spec §3.0).
- :class:`LatentDDIMNet`: DiffAE's ``MLPSkipNet`` over semantic codes plus the code normalisation statistics
  (``conds_mean`` / ``conds_std``) as buffers, named as in ``ffhq256_autoenc_latent/last.ckpt``.
- :class:`ADMUNet`: the guided-diffusion / P2-weighting pixel DDPM (``ffhq_p2.pt``), learned sigma.
- :class:`StructurePreservingNetwork`: the SPN (official ``MappingNetTime``) and :class:`PlainSPN` (``MappingNet``).

All four are diffusers ``ModelMixin`` + ``ConfigMixin``; :func:`load_model` reads a toolkit folder or an
official file and refuses unknown or missing keys by name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import ModelNotFoundError

# ---------------------------------------------------------------------------------------------- primitives


def timestep_embedding(t: torch.Tensor | int | float, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (guided-diffusion / DiffAE ``timestep_embedding``)."""
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.ndim == 0:
        t = t[None]
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (the reference code's ``GroupNorm32``)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int, groups: int = 32) -> GroupNorm32:
    return GroupNorm32(min(groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Downsample(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """Residual block of DiffAE and guided-diffusion.

    in_layers = GN, SiLU, 3x3 conv (up/down-sampling between SiLU and conv). With a time embedding, out_layers
    = GN, [time FiLM h(1+s)+b], [semantic scale h(1+Linear(SiLU(z)))], SiLU, Dropout, zero-initialised 3x3
    conv. Without one (the semantic encoder) there are no out_layers at all. Skip: identity or 1x1 conv.
    """

    def __init__(self, channels: int, emb_channels: int | None, dropout: float, out_channels: int | None = None,
                 cond_channels: int | None = None, up: bool = False, down: bool = False, groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels, groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        self.resample = Upsample() if up else Downsample() if down else nn.Identity()
        self.has_out_layers = emb_channels is not None
        if self.has_out_layers:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            if cond_channels is not None:
                self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels))
            self.out_layers = nn.Sequential(normalization(out_channels, groups), nn.SiLU(), nn.Dropout(p=dropout),
                                            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    @property
    def takes_cond(self) -> bool:
        return hasattr(self, "cond_emb_layers")

    def forward(self, x, emb=None, cond=None, lateral=None):
        if lateral is not None:
            x = torch.cat([x, lateral], dim=1)
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.resample(h))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        if self.has_out_layers:
            h = self.out_layers[0](h)
            scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift  # time first, then the semantic code (DiffAE apply_conditions)
            if self.takes_cond and cond is not None:
                h = h * (1 + self.cond_emb_layers(cond).type(h.dtype)[..., None, None])
            h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy head split (heads before q/k/v), zero-initialised projection."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, groups: int = 32):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = normalization(channels, groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x, **_):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Passes the time embedding, the semantic code and the skip input to the blocks that take them."""

    def forward(self, x, emb=None, cond=None, lateral=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb=emb, cond=cond, lateral=lateral)
                lateral = None
            else:
                x = layer(x)
        return x


class _TimeStyleSeparateEmbed(nn.Module):
    """DiffAE's ``TimeStyleSeperateEmbed``: only the time MLP has weights (``time_embed.time_embed.{0,2}``)."""

    def __init__(self, time_channels: int, out_channels: int):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, out_channels), nn.SiLU(),
                                        nn.Linear(out_channels, out_channels))

    def forward(self, t_emb):
        return self.time_embed(t_emb)


# ---------------------------------------------------------------------------------------------- DiffAE


class SemanticEncoder(nn.Module):
    """DiffAE's ``BeatGANsEncoderModel`` (half UNet, no time input, ``adaptivenonzero`` pooling): image -> z_sem."""

    def __init__(self, image_size: int, model_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 attention_resolutions: Sequence[int], out_channels: int, num_heads: int = 1, groups: int = 32,
                 in_channels: int = 3):
        super().__init__()
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, None, 0.0, int(mult * model_channels), groups=groups)]
                ch = int(mult * model_channels)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, groups=groups))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
            if level != len(channel_mult) - 1:
                resolution //= 2
                self.input_blocks.append(TimestepEmbedSequential(ResBlock(ch, None, 0.0, ch, down=True, groups=groups)))
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, None, 0.0, groups=groups), AttentionBlock(ch, num_heads=num_heads, groups=groups),
            ResBlock(ch, None, 0.0, groups=groups))
        self.out = nn.Sequential(normalization(ch, groups), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                 nn.Conv2d(ch, out_channels, 1), nn.Flatten())

    def forward(self, x):
        h = x
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))


class DiffAEAutoencoder(ModelMixin, ConfigMixin):
    """DiffAE autoencoding UNet eps(x_t, t, z_sem) (+ the semantic encoder when ``semantic_encoder``).

    Defaults are the FFHQ-256 release (``ffhq256_autoenc``): 138.34 M UNet + 30.15 M encoder parameters.
    ``forward(x, t, cond, style_cond=..., styled_levels=...)`` gives every res-block of an encoder level in
    ``styled_levels`` and of the decoder group of such a level the style code, all others (and always the
    middle block unless ``style_middle``) the content code (paper Eq. 27; official ``mix=True``).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 256, in_channels: int = 3, out_channels: int = 3, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), embed_channels: int = 512, dropout: float = 0.1,
                 num_heads: int = 1, norm_num_groups: int = 32, semantic_encoder: bool = True,
                 enc_channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4, 4), enc_num_res_blocks: int = 2,
                 enc_out_channels: int = 512):
        super().__init__()
        g = norm_num_groups
        self.time_embed = _TimeStyleSeparateEmbed(model_channels, embed_channels)
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        block = dict(emb_channels=embed_channels, dropout=dropout, cond_channels=enc_out_channels, groups=g)
        skip_chans: list[list[int]] = [[] for _ in channel_mult]
        skip_chans[0].append(ch)
        self.input_levels = [0]  # level of each input block (the stem belongs to level 0)
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **block)]
                ch = int(mult * model_channels)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, groups=g))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans[level].append(ch)
                self.input_levels.append(level)
            if level != len(channel_mult) - 1:
                resolution //= 2
                # the down-sampling block enters the next level (DiffAE's input_num_blocks bookkeeping)
                self.input_blocks.append(TimestepEmbedSequential(ResBlock(ch, out_channels=ch, down=True, **block)))
                skip_chans[level + 1].append(ch)
                self.input_levels.append(level + 1)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **block), AttentionBlock(ch, num_heads=num_heads, groups=g), ResBlock(ch, **block))
        self.output_blocks = nn.ModuleList([])
        self.output_levels: list[int] = []
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = skip_chans[level].pop()
                layers = [ResBlock(ch + ich, out_channels=int(model_channels * mult), **block)]
                ch = int(model_channels * mult)
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, groups=g))
                if level and i == num_res_blocks:
                    resolution *= 2
                    # the up-sampling block leaves this level and belongs to its decoder group
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **block))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self.output_levels.append(level)
        self.out = nn.Sequential(normalization(ch, g), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))
        if semantic_encoder:
            self.encoder = SemanticEncoder(image_size, model_channels, enc_channel_mult, enc_num_res_blocks,
                                           attention_resolutions, enc_out_channels, num_heads=num_heads, groups=g,
                                           in_channels=in_channels)
        else:
            self.encoder = None
        self.gradient_checkpointing = False  # recompute block activations in backward (training memory)

    # -- code mixing ---------------------------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        return len(self.config.channel_mult)

    def styled_levels_for(self, split_resolution: int) -> frozenset[int]:
        """Levels whose feature resolution is >= ``split_resolution`` (f_ch; official ref_cond_scale=[0,1,2,3])."""
        return frozenset(l for l in range(self.num_levels) if self.config.image_size // 2 ** l >= split_resolution)

    def code_assignment(self, styled_levels: Iterable[int], style_middle: bool = False) -> dict[str, str]:
        """``{res-block name: "style" | "content"}`` exactly as :meth:`forward` routes the two codes."""
        styled = set(styled_levels)
        out: dict[str, str] = {}
        for part, blocks, levels in (("input_blocks", self.input_blocks, self.input_levels),
                                     ("output_blocks", self.output_blocks, self.output_levels)):
            for k, (blk, level) in enumerate(zip(blocks, levels)):
                for j, layer in enumerate(blk):
                    if isinstance(layer, ResBlock):
                        out[f"{part}.{k}.{j}"] = "style" if level in styled else "content"
        for j, layer in enumerate(self.middle_block):
            if isinstance(layer, ResBlock):
                out[f"middle_block.{j}"] = "style" if style_middle else "content"
        return out

    # -- forward --------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_sem = Enc_phi(x) for images in [-1, 1]."""
        if self.encoder is None:
            raise RuntimeError("this DiffAE copy was built without its semantic encoder (semantic_encoder=False)")
        return self.encoder(x)

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor, *, style_cond: torch.Tensor | None = None,
                styled_levels: Iterable[int] = (), style_middle: bool = False) -> torch.Tensor:
        """Predicted noise. ``t``: int or (B,) timesteps of the 1000-step process; ``cond``: (B or 1, D)."""
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        content = cond.expand(b, -1) if cond.shape[0] == 1 else cond
        if style_cond is None:
            style, styled = content, set()
        else:
            style, styled = (style_cond.expand(b, -1) if style_cond.shape[0] == 1 else style_cond), set(styled_levels)
        # training, and any pass that backpropagates (text-driven manipulation), may recompute
        run = self._checkpointed if self.gradient_checkpointing and torch.is_grad_enabled() else _call
        skips: list[list[torch.Tensor]] = [[] for _ in range(self.num_levels)]
        h = x
        for blk, level in zip(self.input_blocks, self.input_levels):
            h = run(blk, h, emb, style if level in styled else content, None)
            skips[level].append(h)
        h = run(self.middle_block, h, emb, style if style_middle and style_cond is not None else content, None)
        for blk, level in zip(self.output_blocks, self.output_levels):
            h = run(blk, h, emb, style if level in styled else content, skips[level].pop())
        return self.out(h)

    @staticmethod
    def _checkpointed(blk, h, emb, cond, lateral):
        from torch.utils.checkpoint import checkpoint

        # non-reentrant checkpointing replays the RNG state, so dropout masks match the first pass
        return checkpoint(_call, blk, h, emb, cond, lateral, use_reentrant=False)


def _call(blk, h, emb, cond, lateral):
    return blk(h, emb=emb, cond=cond, lateral=lateral)


# ---------------------------------------------------------------------------------------------- latent DDIM


class MLPLNAct(nn.Module):
    """One MLPSkipNet layer: Linear, then (if conditioned) h*(bias + Linear(SiLU(t_emb))), LayerNorm, SiLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool, use_cond: bool, activation: bool,
                 cond_channels: int, condition_bias: float = 1.0):
        super().__init__()
        self.use_cond = use_cond
        self.condition_bias = condition_bias
        self.linear = nn.Linear(in_channels, out_channels)
        self.act = nn.SiLU() if activation else nn.Identity()
        if use_cond:
            self.linear_emb = nn.Linear(cond_channels, out_channels)
            # the same Linear is registered twice (``linear_emb`` and ``cond_layers.1``) as in the release
            self.cond_layers = nn.Sequential(self.act, self.linear_emb)
        self.norm = nn.LayerNorm(out_channels) if norm else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear) and activation:
                nn.init.kaiming_normal_(m.weight, a=0, nonlinearity="relu")

    def forward(self, x, cond):
        x = self.linear(x)
        if self.use_cond:
            x = x * (self.condition_bias + self.cond_layers(cond))  # scale first, then norm
        return self.act(self.norm(x))


class LatentDDIMNet(ModelMixin, ConfigMixin):
    """DiffAE's latent DPM ``MLPSkipNet`` (eps over z-normalised semantic codes) + the code statistics.

    ``normalize``/``denormalize`` use ``conds_mean`` / ``conds_std`` (from ``latent.pkl`` or the latent
    checkpoint). FFHQ-256 release: 10 layers of width 2048, input re-injected at layers 1-9, 54.11 M params.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_channels: int = 512, num_hid_channels: int = 2048, num_layers: int = 10,
                 skip_layers: Sequence[int] | None = None, num_time_emb_channels: int = 64, use_norm: bool = True,
                 condition_bias: float = 1.0):
        super().__init__()
        skip = list(range(1, num_layers)) if skip_layers is None else list(skip_layers)
        self.skip_layers = set(skip)
        self.time_embed = nn.Sequential(nn.Linear(num_time_emb_channels, num_channels), nn.SiLU(),
                                        nn.Linear(num_channels, num_channels))
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            last = i == num_layers - 1
            a = num_channels if i == 0 else num_hid_channels
            b = num_channels if last else num_hid_channels
            if i in self.skip_layers:
                a += num_channels
            self.layers.append(MLPLNAct(a, b, norm=use_norm and not last, use_cond=not last, activation=not last,
                                        cond_channels=num_channels, condition_bias=condition_bias))
        self.register_buffer("conds_mean", torch.zeros(1, num_channels))
        self.register_buffer("conds_std", torch.ones(1, num_channels))

    def save_pretrained(self, save_directory: str | os.PathLike, **_) -> None:
        """config.json + safetensors; the ``cond_layers.1`` aliases of ``linear_emb`` are stored once."""
        from safetensors.torch import save_file

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if ".cond_layers." not in k}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        cond = self.time_embed(timestep_embedding(t, self.config.num_time_emb_channels).to(x.dtype))
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                h = torch.cat([h, x], dim=1)
            h = layer(h, cond)
        return h

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.conds_mean.to(z)) / self.conds_std.to(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.conds_std.to(z) + self.conds_mean.to(z)


# ---------------------------------------------------------------------------------------------- P2 ADM


class ADMUNet(ModelMixin, ConfigMixin):
    """guided-diffusion ``UNetModel`` as released by P2-weighting for FFHQ-256 (``ffhq_p2.pt``, 93.56 M).

    Output: 2 x in_channels channels when ``learn_sigma`` (eps, then the variance interpolation v in [-1, 1]).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 256, in_channels: int = 3, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 1,
                 attention_resolutions: Sequence[int] = (16,), num_head_channels: int = 64, dropout: float = 0.0,
                 learn_sigma: bool = True, norm_num_groups: int = 32):
        super().__init__()
        g = norm_num_groups
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans = [ch]
        ds = 1
        attn_ds = {image_size // r for r in attention_resolutions}
        block = dict(emb_channels=emb, dropout=dropout, groups=g)
        attn = lambda c: AttentionBlock(c, num_head_channels=min(num_head_channels, c), groups=g)  # noqa: E731
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **block)]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(ResBlock(ch, out_channels=ch, down=True, **block)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, **block), attn(ch), ResBlock(ch, **block))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, out_channels=int(model_channels * mult), **block)]
                ch = int(model_channels * mult)
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **block))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        out_ch = in_channels * (2 if learn_sigma else 1)
        self.out = nn.Sequential(normalization(ch, g), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_ch, 3, padding=1)))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        hs = []
        h = x
        for blk in self.input_blocks:
            h = blk(h, emb=emb)
            hs.append(h)
        h = self.middle_block(h, emb=emb)
        for blk in self.output_blocks:
            h = blk(h, emb=emb, lateral=hs.pop())
        return self.out(h)


# ---------------------------------------------------------------------------------------------- SPN


class _SPNBlock(nn.Module):
    """``MappingNetTimeBlock``: GN, SiLU, 1x1 conv, GN, time FiLM, SiLU, 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.pre_layer = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 1),
                                       nn.GroupNorm(groups, out_ch))
        self.post_layer = nn.Sequential(nn.SiLU(), nn.Conv2d(out_ch, out_ch, 1))
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch * 2))

    def forward(self, x, emb):
        scale, shift = self.emb_layer(emb)[..., None, None].chunk(2, dim=1)
        return self.post_layer(self.pre_layer(x) * (1 + scale) + shift)


class StructurePreservingNetwork(ModelMixin, ConfigMixin):
    """SPN(I, tau): a per-pixel (1x1 convolutions only) map of the clean photo, added to x_t (paper Eqs. 12-14).

    Official ``MappingNetTime`` widths 128/256/128, time MLP 128 -> 512 -> 512: 873,347 parameters. PyTorch's
    default initialisation (non-zero output) as in the official code; ``zero_init_output`` zeroes the last conv
    so training starts from plain DiffAE behaviour (spec §10.17).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, width: int = 128, hidden: int = 256, time_channels: int = 128,
                 emb_dim: int = 512, norm_num_groups: int = 32, zero_init_output: bool = False):
        super().__init__()
        self.in_layer = nn.Sequential(nn.Conv2d(in_channels, width, 1))
        self.block1 = _SPNBlock(width, hidden, emb_dim, norm_num_groups)
        self.block2 = _SPNBlock(hidden, width, emb_dim, norm_num_groups)
        self.out_layer = nn.Sequential(nn.Conv2d(width, in_channels, 1))
        self.time_embed = nn.Sequential(nn.Linear(time_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if zero_init_output:
            zero_module(self.out_layer)

    def forward(self, image: torch.Tensor, tau) -> torch.Tensor:
        tau = torch.as_tensor(tau, device=image.device)
        tau = tau.expand(image.shape[0]) if tau.ndim == 0 else tau
        emb = self.time_embed(timestep_embedding(tau, self.config.time_channels).to(image.dtype))
        return self.out_layer(self.block2(self.block1(self.in_layer(image), emb), emb))


class PlainSPN(ModelMixin, ConfigMixin):
    """The time-free variant (official ``MappingNet``, ``--map_net`` without ``--map_time``): 67,843 params."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 3, width: int = 128, hidden: int = 256, norm_num_groups: int = 32):
        super().__init__()
        g = norm_num_groups
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 1), nn.GroupNorm(g, width), nn.SiLU(), nn.Conv2d(width, hidden, 1),
            nn.GroupNorm(g, hidden), nn.SiLU(), nn.Conv2d(hidden, width, 1), nn.GroupNorm(g, width), nn.SiLU(),
            nn.Conv2d(width, in_channels, 1))

    def forward(self, image: torch.Tensor, tau=None) -> torch.Tensor:
        return self.layers(image)


# ---------------------------------------------------------------------------------------------- loading

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def strict_load(model: nn.Module, state: dict, *, what: str, ignore_prefixes: Sequence[str] = ()) -> nn.Module:
    """``load_state_dict`` that names unknown and missing keys (and shape mismatches) in one error."""
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    expected = model.state_dict()
    # a parameter registered under two names (MLPSkipNet's linear_emb / cond_layers.1) may be stored once
    by_storage: dict[tuple, list[str]] = {}
    for k, v in expected.items():
        if v.data_ptr() == 0:  # meta / empty tensors have no storage to share
            continue
        by_storage.setdefault((v.data_ptr(), tuple(v.shape)), []).append(k)
    for names in by_storage.values():
        present = [n for n in names if n in state]
        if len(names) > 1 and present:
            for n in names:
                state.setdefault(n, state[present[0]])
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if unknown or missing or shapes:
        parts = []
        for label, keys in (("unknown keys", unknown), ("missing keys", missing), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                if label == "shape mismatches":
                    shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in keys[:8])
                parts.append(f"{label}: {shown}")
        raise ModelNotFoundError(f"{what} does not match a {type(model).__name__} of this configuration; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def read_torch_file(path: str | os.PathLike, what: str) -> dict:
    """A released checkpoint's tensors and plain containers; Lightning 1.x bookkeeping is read inertly, code never runs."""
    from ..checkpoints import load_checkpoint

    obj = load_checkpoint(path, what)
    if not isinstance(obj, dict):
        raise ModelNotFoundError(f"{path} is not a {what} file (it holds a {type(obj).__name__}, not a dict of weights)")
    return obj


#: DiffAE ``TrainConfig`` field -> our config key, for configs read from a Lightning file's hyper-parameters.
_DIFFAE_HPARAMS = {"img_size": "image_size", "net_ch": "model_channels", "net_ch_mult": "channel_mult",
                   "net_num_res_blocks": "num_res_blocks", "net_attn": "attention_resolutions",
                   "net_beatgans_embed_channels": "embed_channels", "dropout": "dropout",
                   "net_beatgans_attn_head": "num_heads", "net_enc_channel_mult": "enc_channel_mult",
                   "net_enc_num_res_blocks": "enc_num_res_blocks", "style_ch": "enc_out_channels"}
_LATENT_HPARAMS = {"style_ch": "num_channels", "net_latent_num_hid_channels": "num_hid_channels",
                   "net_latent_layers": "num_layers", "net_latent_skip_layers": "skip_layers",
                   "net_latent_time_emb_channels": "num_time_emb_channels", "net_latent_use_norm": "use_norm",
                   "net_latent_condition_bias": "condition_bias"}


def config_from_hparams(cls, obj: dict) -> dict:
    """The architecture a DiffAE ``last.ckpt`` was trained with, from its saved ``TrainConfig`` fields.

    DiffAE's ``LitModel`` saves ``conf.as_dict_jsonable()`` as Lightning hyper-parameters; our defaults are the
    FFHQ-256 release, so only fields present (and not None) override them. Empty for other files and classes.
    """
    hp = obj.get("hyper_parameters")
    table = {DiffAEAutoencoder: _DIFFAE_HPARAMS, LatentDDIMNet: _LATENT_HPARAMS}.get(cls)
    if not isinstance(hp, dict) or table is None:
        return {}
    out = {}
    for field, key in table.items():
        value = hp.get(field)
        if value is not None:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _lightning_subtree(obj: dict, prefix: str) -> dict:
    sd = obj.get("state_dict", obj)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_model(cls, path: str | os.PathLike, *, config: dict | None = None, use_ema: bool = True,
               latent_stats: str | os.PathLike | None = None) -> ModelMixin:
    """A model from a toolkit folder (``config.json`` + safetensors) or an official file.

    Official files: DiffAE ``last.ckpt`` (Lightning; the ``ema_model.`` sub-tree, or ``model.`` with
    ``use_ema=False``) for :class:`DiffAEAutoencoder` and, together with ``conds_mean``/``conds_std``,
    :class:`LatentDDIMNet` (statistics may come from ``latent.pkl`` instead); ``ffhq_p2.pt`` for
    :class:`ADMUNet`; an OSASIS ``iter_*.pt`` (``diffae_B`` / ``model_map``) for the fine-tuned UNet and SPN.
    """
    path = Path(path)
    name = cls.__name__
    if path.is_dir():
        if not (path / "config.json").exists() or not (path / WEIGHTS_NAME).exists():
            raise ModelNotFoundError(f"{path} is not a saved {name} folder (needs config.json and {WEIGHTS_NAME})")
        from safetensors.torch import load_file

        model = cls.from_config(cls.load_config(path))
        return strict_load(model, load_file(str(path / WEIGHTS_NAME)), what=str(path)).eval()
    obj = read_torch_file(path, f"{name} weights")
    model = cls(**(config if config is not None else config_from_hparams(cls, obj)))
    root = "ema_model." if use_ema else "model."
    ignore: tuple[str, ...] = ()
    if cls is DiffAEAutoencoder:
        if "diffae_B" in obj:  # an official OSASIS per-style checkpoint
            state = obj["diffae_B"]
        else:
            state = _lightning_subtree(obj, root) if "state_dict" in obj else obj
        ignore = ("latent_net.",) + (() if model.encoder is not None else ("encoder.",))
    elif cls is LatentDDIMNet:
        sd = obj.get("state_dict", obj)
        state = _lightning_subtree(obj, root + "latent_net.")
        stats = {k: sd[k] for k in ("conds_mean", "conds_std") if k in sd}
        if latent_stats is not None:
            pkl = read_torch_file(latent_stats, "latent statistics (latent.pkl)")
            stats = {k: pkl[k] for k in ("conds_mean", "conds_std")}
        if len(stats) != 2:
            raise ModelNotFoundError(f"{path} has no conds_mean/conds_std; pass the latent statistics file (latent.pkl)")
        state.update({k: v.reshape(1, -1).float() for k, v in stats.items()})
    elif cls in (StructurePreservingNetwork, PlainSPN):
        state = obj["model_map"] if "model_map" in obj else obj
    else:
        state = obj.get("state_dict", obj)
    return strict_load(model, state, what=str(path), ignore_prefixes=ignore).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
