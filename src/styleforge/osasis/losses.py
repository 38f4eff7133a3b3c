"""OSASIS stage-1 losses (paper Eqs. 15-26) and the CLIP image/text embedder they use.

E(.) is a CLIP image embedding. With v_style = E(I_B^style) - E(I_A^style):

- cross-domain (Eq. 17): 1 - cos(v_style, E(x0_in) - E(I_A^in)), averaged over the content batch;
- in-domain (Eq. 20): 1 - cos(E(I_A^in) - E(I_A^style), E(x0_in) - E(I_B^style));
- reconstruction (Eqs. 21-25) of I_B^style by the style branch: L1, LPIPS-VGG and a CLIP term, either
  1 - cos (official code, default) or the paper's L1 norm of the embedding difference.

Total (Eq. 26) with the official weights 1, 0.5, 10, 10, 30.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .config import LossWeights  # noqa: F401 (re-exported)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PREPROCESSING = ("official", "proper")
CLIP_RECON_KINDS = ("cosine", "l1")

#: ``perceptual(a, b) -> (B,)`` distances for images in [-1, 1] (LPIPS-VGG by default, anything in tests)
PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CLIPEmbedder(torch.nn.Module):
    """Image (and text) embeddings of a transformers ``CLIPModel`` for images in [-1, 1].

    ``preprocess="official"``: nearest resize to the model's input size, no CLIP normalisation (what the
    released code feeds its CLIP, and what its loss weights were tuned with); ``"proper"``: bicubic, [0, 1],
    CLIP mean/std (spec §10.6). Embeddings are not normalised (the losses use cosines).
    """

    def __init__(self, model, tokenizer=None, preprocess: str = "official"):
        super().__init__()
        if preprocess not in CLIP_PREPROCESSING:
            raise InputError(f"CLIP preprocessing must be one of {CLIP_PREPROCESSING}, got {preprocess!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.image_size = model.config.vision_config.image_size

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if self.preprocess == "official":
            return F.interpolate(images, size=size, mode="nearest")
        x = F.interpolate((images + 1) / 2, size=size, mode="bicubic", align_corners=False)
        mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        out = self.model.get_image_features(pixel_values=self.pixels(images).to(p.dtype))
        return _features(out).float()

    def text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("text-driven manipulation needs the CLIP tokenizer (load CLIP from a folder that has one)")
        max_len = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        dev = next(self.model.parameters()).device
        kw = {"input_ids": tokens["input_ids"].to(dev)}
        if "attention_mask" in tokens:
            kw["attention_mask"] = tokens["attention_mask"].to(dev)
        return _features(self.model.get_text_features(**kw)).float()


def _features(out) -> torch.Tensor:
    # transformers 4.x returns the projected tensor, 5.x an output object whose pooler_output is projected
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def directional_loss(a: torch.Tensor, b: torch.Tensor, *, what: str, eps: float = 1e-12) -> torch.Tensor:
    """Mean over the batch of 1 - cos(a, b) (rows broadcast). A zero-length direction is an error."""
    a, b = torch.broadcast_tensors(a, b)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    if bool((na <= eps).any()) or bool((nb <= eps).any()):
        raise InputError(f"{what}: a CLIP direction has zero length (two identical images or texts); "
                         "the cosine is undefined")
    return (1 - (a * b).sum(-1) / (na * nb)).mean()


class OSASISLoss(torch.nn.Module):
    """All stage-1 terms on the current step's clean predictions; style-image embeddings are cached."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], perceptual: PerceptualFn | None,
                 style_b: torch.Tensor, style_a: torch.Tensor, weights: LossWeights | None = None,
                 clip_recon: str = "cosine"):
        super().__init__()
        if clip_recon not in CLIP_RECON_KINDS:
            raise InputError(f"CLIP reconstruction loss must be one of {CLIP_RECON_KINDS}, got {clip_recon!r}")
        self.weights = weights or LossWeights()
        if perceptual is None and self.weights.recon_lpips != 0:
            raise InputError("the LPIPS reconstruction weight is non-zero but no perceptual network was given")
        self.embed = embed
        self.perceptual = perceptual
        self.clip_recon = clip_recon
        self.register_buffer("style_b", style_b.detach())
        self.register_buffer("style_a", style_a.detach())
        with torch.no_grad():
            self.e_style_b = embed(style_b).detach()
            self.e_style_a = embed(style_a).detach()  # constant: computed once (the official code re-embeds them)
        self.v_style = self.e_style_b - self.e_style_a

    def cross_domain(self, e_out: torch.Tensor, e_in: torch.Tensor) -> torch.Tensor:
        """Eq. 17: the photo->output change follows the photo-counterpart->artwork change."""
        return directional_loss(self.v_style, e_out - e_in, what="cross-domain loss")

    def in_domain(self, e_out: torch.Tensor, e_in: torch.Tensor) -> torch.Tensor:
        """Eq. 20: (input - style photo) within domain A parallels (output - artwork) within domain B."""
        return directional_loss(e_in - self.e_style_a, e_out - self.e_style_b, what="in-domain loss")

    def recon_clip_term(self, e_rec: torch.Tensor) -> torch.Tensor:
        target = self.e_style_b.expand_as(e_rec)
        if self.clip_recon == "cosine":
            return (1 - F.cosine_similarity(e_rec, target, dim=-1)).mean()
        return (e_rec - target).abs().sum(-1).mean()  # paper Eq. 24: L1 norm of the embedding difference

    def forward(self, x0_content: torch.Tensor, content_images: torch.Tensor, x0_style: torch.Tensor,
                content_embeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms and ``total`` for one decode step."""
        w = self.weights
        e_out = self.embed(x0_content)
        e_in = self.embed(content_images).detach() if content_embeds is None else content_embeds
        e_rec = self.embed(x0_style)
        target = self.style_b.expand_as(x0_style)
        terms = {
            "cross": self.cross_domain(e_out, e_in),
            "in": self.in_domain(e_out, e_in),
            "l1": (x0_style - target).abs().mean(),
            "lpips": self.perceptual(x0_style, target).mean() if self.perceptual is not None else x0_style.new_zeros(()),
            "clip": self.recon_clip_term(e_rec),
        }
        terms["total"] = (w.cross * terms["cross"] + w.in_domain * terms["in"] + w.recon_l1 * terms["l1"]
                          + w.recon_lpips * terms["lpips"] + w.recon_clip * terms["clip"])
        return terms


def clip_text_direction_loss(e_image_out: torch.Tensor, e_image_in: torch.Tensor, text_direction: torch.Tensor) -> torch.Tensor:
    """Text-driven manipulation (paper §3.2): 1 - cos(E_T(target) - E_T(source), E_I(edited) - E_I(input))."""
    return directional_loss(text_direction, e_image_out - e_image_in, what="text-direction loss")
