"""CLIP score, CLIP accuracy and CLIP directional similarity with a transformers ``CLIPModel``.

- **CLIP score** (Hessel et al. 2021 without the 2.5 rescaling, as pix2pix-zeroCon Table I reports it, spec
  §4): raw cosine similarity between the image embedding of the edited image and the text embedding of the
  target prompt, in [-1, 1].
- **CLIP accuracy** (Parmar et al. 2023, pix2pix-zero): share of images whose similarity to the target text
  exceeds that to the source text (ties count as failures).
- **CLIP directional similarity** (Gal et al. 2022, StyleGAN-NADA; used by InstructPix2Pix): cosine between the
  image-embedding change ``E_I(output) − E_I(input)`` and the text-embedding change ``E_T(target) − E_T(source)``.

Preprocessing (the ``CLIPImageProcessor`` recipe, done on tensors): shorter side resized to the model's image
size (bicubic, antialiased), centre crop to a square, CLIP mean/std normalisation. Default model
``openai/clip-vit-large-patch14`` (spec pix2pix_zerocon §4 decision); always report which one was used.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelNotFoundError
from .images import to_tensor

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(model: str = DEFAULT_CLIP_MODEL, *, offline: bool | None = None):
    """(CLIPModel, tokenizer) from a hub id or a local folder, as a one-line ModelNotFoundError when absent."""
    from transformers import CLIPModel, CLIPTokenizer

    from ..loading import local_files_only, unavailable_reason

    local_only = local_files_only(offline)
    try:
        net = CLIPModel.from_pretrained(model, local_files_only=local_only)
        tok = CLIPTokenizer.from_pretrained(model, local_files_only=local_only)
    except Exception as e:
        reason = unavailable_reason(e, offline)
        raise ModelNotFoundError(f"CLIP model {model!r} is not available ({reason}); download it with `hf download {model}` "
                                 "or pass a local CLIP folder") from None
    return net.eval().requires_grad_(False), tok


def clip_preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """[-1, 1] images -> CLIP pixel values (resize shorter side, centre crop, normalise)."""
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[..., top:top + image_size, left:left + image_size]
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(out) -> torch.Tensor:
    # transformers 4.x returns the projected tensor, 5.x a model output whose pooler_output is projected
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def image_embeddings(model, images) -> torch.Tensor:
    """(B, D) L2-normalised CLIP image embeddings."""
    x = to_tensor(images, name="image")
    p = next(model.parameters())
    pixels = clip_preprocess(x, model.config.vision_config.image_size).to(p)
    return F.normalize(_features(model.get_image_features(pixel_values=pixels)).float(), dim=-1).cpu()


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: str | Sequence[str]) -> torch.Tensor:
    """(N, D) L2-normalised CLIP text embeddings."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    max_len = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    p = next(model.parameters())
    out = model.get_text_features(input_ids=tokens.input_ids.to(p.device), attention_mask=tokens.attention_mask.to(p.device))
    return F.normalize(_features(out).float(), dim=-1).cpu()


def _broadcast_texts(texts, n: int) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) == 1:
        texts = texts * n
    if len(texts) != n:
        raise ValueError(f"got {len(texts)} texts for {n} images; give one text, or one per image")
    return texts


def clip_score(model, tokenizer, images, texts) -> torch.Tensor:
    """(B,) cosine similarity between each image and its text (one text is used for every image)."""
    img = image_embeddings(model, images)
    txt = text_embeddings(model, tokenizer, _broadcast_texts(texts, img.shape[0]))
    return (img * txt).sum(-1)


def clip_accuracy(model, tokenizer, images, source_texts, target_texts) -> float:
    """Share of images more similar to their target text than to their source text (ties fail)."""
    img = image_embeddings(model, images)
    src = text_embeddings(model, tokenizer, _broadcast_texts(source_texts, img.shape[0]))
    tgt = text_embeddings(model, tokenizer, _broadcast_texts(target_texts, img.shape[0]))
    return ((img * tgt).sum(-1) > (img * src).sum(-1)).float().mean().item()


def clip_directional_similarity(model, tokenizer, input_images, output_images, source_texts, target_texts) -> torch.Tensor:
    """(B,) cos(E_I(out) − E_I(in), E_T(target) − E_T(source)); NaN where either change is zero."""
    e_in = image_embeddings(model, input_images)
    e_out = image_embeddings(model, output_images)
    n = e_out.shape[0]
    if e_in.shape[0] == 1 and n > 1:
        e_in = e_in.expand(n, -1)
    d_img = e_out - e_in
    d_txt = (text_embeddings(model, tokenizer, _broadcast_texts(target_texts, n))
             - text_embeddings(model, tokenizer, _broadcast_texts(source_texts, n)))
    denom = d_img.norm(dim=-1) * d_txt.norm(dim=-1)
    cos = (d_img * d_txt).sum(-1) / denom
    return torch.where(denom > 0, cos, torch.full_like(cos, float("nan")))
