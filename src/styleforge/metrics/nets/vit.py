"""The Vision Transformer of DINO (Caron et al. 2021, facebookresearch/dino ``vision_transformer.py``).

State-dict layout of the published backbones (``dino_vitbase8_pretrain.pth``, ``dino_vitbase16_pretrain.pth``):
``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + (224/p)², D), ``patch_embed.proj.{weight,bias}`` (D, 3, p, p),
``blocks.N.norm1``, ``blocks.N.attn.qkv.{weight,bias}`` (3D, D), ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1`` (4D, D), ``blocks.N.mlp.fc2``, ``norm``. LayerNorm eps 1e-6, GELU MLP, pre-norm blocks.
Other input sizes use DINO's bicubic interpolation of the patch position embeddings.

The same module also holds CLIP vision towers in DreamSim's "CLIP as DINO" layout (``load_clip_as_dino`` /
``load_open_clip_as_dino``): ``pre_norm=True`` adds CLIP's ``ln_pre`` as ``pos_drop.{weight,bias}``, LayerNorm eps
1e-5, and QuickGELU for OpenAI CLIP (standard GELU for OpenCLIP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(3, B, heads, N, D/heads): the reshape DINO (and Splice's key extractor) applies to ``qkv(x)``."""
        b, n, c = x.shape
        return self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.split_qkv(x)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation."""
    return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = quick_gelu if act == "quick_gelu" else F.gelu

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, *, patch_size: int = 16, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, img_size: int = 224, act: str = "gelu", eps: float = 1e-6,
                 pre_norm: bool = False):
        super().__init__()
        if act not in ("gelu", "quick_gelu"):
            raise ValueError(f"act must be 'gelu' or 'quick_gelu', got {act!r}")
        self.patch_size, self.embed_dim, self.num_heads = patch_size, embed_dim, num_heads
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        # DINO's pos_drop is a parameter-free dropout; DreamSim's CLIP towers put ln_pre there
        self.pos_drop = nn.LayerNorm(embed_dim, eps=eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, act, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def interpolate_pos_encoding(self, num_tokens: int, height: int, width: int) -> torch.Tensor:
        """DINO's rule: bicubic resampling of the square grid of patch embeddings to the input's grid."""
        n = self.pos_embed.shape[1] - 1
        if num_tokens - 1 == n and height == width:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        h0, w0 = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(n))
        # the +0.1 avoids floating-point errors in the scale factor (as DINO does)
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic")
        if grid.shape[-2:] != (h0, w0):
            grid = F.interpolate(patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2), size=(h0, w0), mode="bicubic")
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        return self.pos_drop(tokens + self.interpolate_pos_encoding(tokens.shape[1], h, w))

    def block_keys(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, heads, tokens, D/heads): the attention keys of block ``layer`` (input ImageNet-normalised).

        Runs only the blocks up to ``layer``; the keys are ``qkv(norm1(x))`` of that block, as Splice hooks them.
        """
        x = self.prepare_tokens(x)
        for block in self.blocks[:layer]:
            x = block(x)
        block = self.blocks[layer]
        return block.attn.split_qkv(block.norm1(x))[1]

    def block_output(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, tokens, D): the output of block ``layer`` (no final norm), what a forward hook on it would see."""
        x = self.prepare_tokens(x)
        for block in self.blocks[:layer + 1]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, D) after the final norm (token 0 = CLS)."""
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def dino_vitb8() -> VisionTransformer:
    return VisionTransformer(patch_size=8, embed_dim=768, depth=12, num_heads=12)


def dino_vitb16() -> VisionTransformer:
    return VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12)
