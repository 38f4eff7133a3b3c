"""Networks of the region-wise stylizer (TCP, You et al. 2021, built on the Swapping Autoencoder).

- :class:`RegionEncoder`: a residual trunk ``features(x) -> e`` with a content head ``content(e) -> C`` (spatial,
  L2-normalised per pixel) and a style head ``style(e) -> S`` (one L2-normalised vector per image).
- :class:`RegionGenerator`: StyleGAN2-like decoder that starts from C instead of a learned constant and is
  modulated by S directly (no mapping MLP).
- :class:`RegionDiscriminator`: StyleGAN2 residual image discriminator.
- :class:`PatchCooccurrenceDiscriminator`: judges whether query patches share the texture statistics of a set
  of reference patches (SwapAE's co-occurrence discriminator).

Layer conventions (spec §2.2): equalized learning rate everywhere, LeakyReLU(0.2)·√2 activations, blurred
strided convs for resampling, residual sums divided by √2, and no normalisation layer that depends on the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

SQRT2 = math.sqrt(2.0)

# --------------------------------------------------------------------------------------------- layers


def lrelu(x: torch.Tensor) -> torch.Tensor:
    # the √2 gain keeps activations at unit variance with equalized-lr weights
    return F.leaky_relu(x, 0.2) * SQRT2


class EqualConv2d(nn.Module):
    """Conv whose N(0,1) weights are scaled by 1/sqrt(fan_in) at run time (equalized learning rate)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, activate=False, padding_mode="zeros"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.stride, self.padding, self.activate, self.padding_mode = stride, padding, activate, padding_mode

    def forward(self, x):
        if self.padding and self.padding_mode == "reflect":
            x = F.pad(x, [self.padding] * 4, mode="reflect")
            padding = 0
        else:
            padding = self.padding
        x = F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=padding)
        return lrelu(x) if self.activate else x


class EqualLinear(nn.Module):
    def __init__(self, in_features, out_features, bias=True, bias_init=0.0, activate=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = 1.0 / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x):
        x = F.linear(x, self.weight * self.scale, self.bias)
        return lrelu(x) if self.activate else x


class Blur(nn.Module):
    """Depthwise FIR low-pass filter with explicit (before, after) padding."""

    def __init__(self, taps, pad, gain=1.0, padding_mode="constant"):
        super().__init__()
        k = torch.tensor(taps, dtype=torch.float32)
        k = k[:, None] * k[None, :]
        self.register_buffer("kernel", k / k.sum() * gain, persistent=False)
        self.pad, self.padding_mode = pad, padding_mode

    def forward(self, x):
        p0, p1 = self.pad
        x = F.pad(x, [p0, p1, p0, p1], mode=self.padding_mode)
        c = x.shape[1]
        return F.conv2d(x, self.kernel.to(x.dtype)[None, None].expand(c, 1, -1, -1), groups=c)


class DownConv(nn.Module):
    """Blur, then a stride-2 conv without padding: H -> H/2 for even H."""

    def __init__(self, in_channels, out_channels, kernel_size, taps, bias=True, activate=True, padding_mode="constant"):
        super().__init__()
        p = (len(taps) - 2) + (kernel_size - 1)
        self.blur = Blur(taps, ((p + 1) // 2, p // 2), padding_mode=padding_mode)
        self.conv = EqualConv2d(in_channels, out_channels, kernel_size, stride=2, bias=bias, activate=activate)

    def forward(self, x):
        return self.conv(self.blur(x))


class DownResBlock(nn.Module):
    """3×3 conv, blurred stride-2 3×3 conv; skip = blurred stride-2 1×1 conv (no bias, no activation)."""

    def __init__(self, in_channels, out_channels, taps, padding_mode="constant"):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, padding=1, activate=True, padding_mode=padding_mode)
        pad_mode = "reflect" if padding_mode == "reflect" else "constant"
        self.conv2 = DownConv(in_channels, out_channels, 3, taps, padding_mode=pad_mode)
        self.skip = DownConv(in_channels, out_channels, 1, taps, bias=False, activate=False, padding_mode=pad_mode)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class ResBlock(nn.Module):
    """Non-downsampling residual block (used once at the end of the patch discriminator's trunk)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, padding=1, activate=True)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3, padding=1, activate=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv, computed as one grouped conv over the batch.

    ``demod="standard"``: w'' = w·s / sqrt(Σ (w·s)² + 1e-8) per output channel and sample.
    ``demod="input_scaling"``: the official SwapAE variant; the RMS-normalised style scales the input activations
    and the weights are normalised independently of the style (cheaper, and allows spatial style maps).
    ``demodulate=False`` is used by ToRGB.
    """

    def __init__(self, in_channels, out_channels, kernel_size, style_dim, demodulate=True, upsample=False, demod="standard"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample, self.demod = demodulate, upsample, demod
        if upsample:
            # transposed 3×3 stride-2 conv gives 2H+1; the 4-tap blur (gain 4 for the zeros) brings it to 2H
            self.blur = Blur([1, 3, 3, 1], (1, 1), gain=4.0)

    def forward(self, x, style):
        n, c, h, w = x.shape
        s = self.affine(style)  # (N, C_in) per-input-channel scales
        if self.demod == "input_scaling" and self.demodulate:
            x = x * (s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + 1e-8))[:, :, None, None]
            weight = self.weight[0] * self.scale
            weight = weight * torch.rsqrt(weight.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
            if self.upsample:
                out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
                return self.blur(out)
            return F.conv2d(x, weight, padding=self.kernel_size // 2)
        weight = self.scale * self.weight * s[:, None, :, None, None]  # (N, C_out, C_in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)
        x = x.reshape(1, n * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c, self.out_channels, self.kernel_size, self.kernel_size)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            out = out.view(n, self.out_channels, out.shape[-2], out.shape[-1])
            return self.blur(out)
        weight = weight.reshape(n * self.out_channels, c, self.kernel_size, self.kernel_size)
        out = F.conv2d(x, weight, padding=self.kernel_size // 2, groups=n)
        return out.view(n, self.out_channels, out.shape[-2], out.shape[-1])


class NoiseInjection(nn.Module):
    """Adds strength·N(0,1) per pixel. The strength starts at 0, so a fresh model ignores the noise.

    Modes: ``"random"`` (fresh noise, used in training), ``"fixed"`` (a deterministic per-layer noise map that
    depends only on the layer and the resolution, used at inference), ``"off"``.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1))
        self.seed = seed

    def forward(self, x, mode: str):
        if mode == "off":
            return x
        n, _, h, w = x.shape
        if mode == "random":
            noise = torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        else:
            gen = torch.Generator().manual_seed(self.seed * 100003 + h * 1009 + w)
            noise = torch.randn(1, 1, h, w, generator=gen).to(device=x.device, dtype=x.dtype)
        return x + self.strength * noise


class StyledConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, style_dim, noise_seed, upsample=False, demod="standard"):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample, demod=demod)
        self.noise = NoiseInjection(noise_seed)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, style, noise_mode):
        x = self.noise(self.conv(x, style), noise_mode)
        return lrelu(x + self.bias[None, :, None, None])


class StyledResBlock(nn.Module):
    """Two modulated 3×3 convs (the first optionally upsampling); the skip is a 1×1 conv (+ ×2 bilinear)."""

    def __init__(self, in_channels, out_channels, style_dim, noise_seed, upsample, demod):
        super().__init__()
        self.conv1 = StyledConv(in_channels, out_channels, 3, style_dim, noise_seed, upsample=upsample, demod=demod)
        self.conv2 = StyledConv(out_channels, out_channels, 3, style_dim, noise_seed + 1, demod=demod)
        self.upsample = upsample
        if upsample:
            # spec: the up-blocks' skip has an activation when the width changes, the head blocks' skip has none
            self.skip = EqualConv2d(in_channels, out_channels, 1, bias=True, activate=True) if in_channels != out_channels else None
        else:
            self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x, style, noise_mode):
        main = self.conv2(self.conv1(x, style, noise_mode), style, noise_mode)
        skip = self.skip(x) if self.skip is not None else x
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return (main + skip) / SQRT2


def normalize_code(code: torch.Tensor) -> torch.Tensor:
    """L2-normalise over dim 1: per pixel for content maps, per sample for style vectors."""
    return F.normalize(code, dim=1, eps=1e-8)


# --------------------------------------------------------------------------------------------- encoder


class RegionEncoder(ModelMixin, ConfigMixin):
    """E = (trunk, H_c, H_s) of paper §3.1, written as ``features``, ``content`` and ``style``."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        channels: tuple = (16, 32, 64, 128),
        content_channels: int = 8,
        style_channels: tuple = (256, 256),
        style_dim: int = 256,
        normalize_codes: bool = True,
    ):
        super().__init__()
        channels = list(channels)
        self.from_rgb = EqualConv2d(3, channels[0], 1, activate=True)
        self.trunk = nn.ModuleList(
            DownResBlock(cin, cout, [1, 2, 1], padding_mode="reflect") for cin, cout in zip(channels[:-1], channels[1:])
        )
        width = channels[-1]
        self.content_head = nn.Sequential(
            EqualConv2d(width, width, 1, activate=True),
            EqualConv2d(width, content_channels, 1),  # linear last layer (official SwapAE)
        )
        s1, s2 = style_channels
        # two "valid" stride-2 3×3 convs, then global mean pooling drops the layout (spec §2.2)
        self.style_convs = nn.Sequential(
            EqualConv2d(width, s1, 3, stride=2, activate=True),
            EqualConv2d(s1, s2, 3, stride=2, activate=True),
        )
        self.style_linear = EqualLinear(s2, style_dim)

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.trunk)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's deep feature map e (N, C_e, H/2^d, W/2^d), where TCP composes regions (Eq. 5)."""
        x = self.from_rgb(x)
        for block in self.trunk:
            x = block(x)
        return x

    def content(self, e: torch.Tensor) -> torch.Tensor:
        c = self.content_head(e)
        return normalize_code(c) if self.config.normalize_codes else c

    def style(self, e: torch.Tensor) -> torch.Tensor:
        s = self.style_convs(e).mean(dim=(2, 3))
        s = self.style_linear(s)
        return normalize_code(s) if self.config.normalize_codes else s

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.features(x)
        return self.content(e), self.style(e)


# --------------------------------------------------------------------------------------------- generator


class RegionGenerator(ModelMixin, ConfigMixin):
    """G(C, S): input modulation x0 = C ⊙ a(S) + b(S), two head blocks, one up block per encoder downsampling."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        content_channels: int = 8,
        style_dim: int = 256,
        head_channels: tuple = (64, 128),
        up_channels: tuple = (128, 64, 32),
        demod: str = "standard",
        normalize_codes: bool = True,
        style_gain: float = 1.0,
    ):
        super().__init__()
        if demod not in ("standard", "input_scaling"):
            raise ValueError(f"demod must be 'standard' or 'input_scaling', got {demod!r}")
        # zero bias as in the official SwapAE GeneratorModulation: at initialisation x0 is dominated by the
        # style terms, so the generator has to use S from the first step instead of learning to ignore it
        self.input_scale = EqualLinear(style_dim, content_channels)
        self.input_shift = EqualLinear(style_dim, content_channels)
        blocks, cin, seed = [], content_channels, 0
        for cout in head_channels:
            blocks.append(StyledResBlock(cin, cout, style_dim, seed, upsample=False, demod=demod))
            cin, seed = cout, seed + 2
        for cout in up_channels:
            blocks.append(StyledResBlock(cin, cout, style_dim, seed, upsample=True, demod=demod))
            cin, seed = cout, seed + 2
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(3))
        # None: random noise in train mode, fixed noise in eval mode (spec §4: deterministic inference)
        self.noise_mode: str | None = None

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.config.normalize_codes:
            content, style = normalize_code(content), normalize_code(style)
        # style_gain = sqrt(style_dim) gives the affines unit-variance inputs, the scale equalized lr assumes
        style = style * self.config.style_gain
        noise_mode = self.noise_mode or ("random" if self.training else "fixed")
        x = content * self.input_scale(style)[:, :, None, None] + self.input_shift(style)[:, :, None, None]
        for block in self.blocks:
            x = block(x, style, noise_mode)
        return self.to_rgb(x, style) + self.rgb_bias[None, :, None, None]  # no tanh (spec decision 17)


# --------------------------------------------------------------------------------------------- discriminators


class RegionDiscriminator(ModelMixin, ConfigMixin):
    """StyleGAN2 residual discriminator (no minibatch-stddev), returns one logit per image."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 64, channels: tuple = (32, 64, 128, 128, 128)):
        super().__init__()
        channels = list(channels)
        n_blocks = int(math.log2(image_size // 4))
        if 4 * 2**n_blocks != image_size or len(channels) != n_blocks + 1:
            raise ValueError(f"image_size {image_size} needs {n_blocks + 1} channel entries, got {len(channels)}")
        self.from_rgb = EqualConv2d(3, channels[0], 1, activate=True)
        self.blocks = nn.ModuleList(DownResBlock(a, b, [1, 3, 3, 1]) for a, b in zip(channels[:-1], channels[1:]))
        self.final_conv = EqualConv2d(channels[-1], channels[-1], 3, padding=1, activate=True)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[-1] * 16, channels[-1], activate=True),
            EqualLinear(channels[-1], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_conv(x)
        return self.final_linear(x.flatten(1))


class PatchCooccurrenceDiscriminator(ModelMixin, ConfigMixin):
    """D_co(reference patches, query patches): do the queries look like they come from the reference image?"""

    config_name = "config.json"

    @register_to_config
    def __init__(self, patch_size: int = 32, channels: tuple = (16, 32, 64, 128), head_channels: tuple = (512, 512, 256)):
        super().__init__()
        channels = list(channels)
        n_blocks = int(math.log2(patch_size // 4))
        if 4 * 2**n_blocks != patch_size or len(channels) != n_blocks + 1:
            raise ValueError(f"patch_size {patch_size} needs {n_blocks + 1} channel entries, got {len(channels)}")
        self.from_rgb = EqualConv2d(3, channels[0], 3, padding=1, activate=True)
        self.blocks = nn.ModuleList(DownResBlock(a, b, [1, 3, 3, 1]) for a, b in zip(channels[:-1], channels[1:]))
        self.wide = ResBlock(channels[-1], 2 * channels[-1])
        self.final_conv = EqualConv2d(2 * channels[-1], channels[-1], 3, activate=True)  # valid: 4×4 -> 2×2
        self.feature_dim = channels[-1] * 4
        layers, cin = [], 2 * self.feature_dim
        for cout in head_channels:
            layers.append(EqualLinear(cin, cout, activate=True))
            cin = cout
        layers.append(EqualLinear(cin, 1))
        self.head = nn.Sequential(*layers)

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(patches)
        for block in self.blocks:
            x = block(x)
        return self.final_conv(self.wide(x)).flatten(1)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, n_images: int) -> torch.Tensor:
        """``query``: (n_images·n_crop, 3, p, p); ``reference``: (n_images·n_ref, 3, p, p), grouped per image.

        The reference feature of image i is the mean over its reference patches, so it is invariant to their order.
        Returns one logit per query patch, (n_images·n_crop, 1).
        """
        q = self.features(query).view(n_images, -1, self.feature_dim)
        r = self.features(reference).view(n_images, -1, self.feature_dim).mean(1, keepdim=True)
        joint = torch.cat([r.expand_as(q), q], dim=2)
        return self.head(joint.flatten(0, 1))


def build_models(preset: dict) -> dict[str, nn.Module]:
    """Fresh encoder, generator, image discriminator and patch discriminator for a preset dict."""
    return {
        "encoder": RegionEncoder(**preset["encoder"]),
        "generator": RegionGenerator(**preset["generator"]),
        "discriminator": RegionDiscriminator(**preset["discriminator"]),
        "patch_discriminator": PatchCooccurrenceDiscriminator(**preset["patch_discriminator"]),
    }
