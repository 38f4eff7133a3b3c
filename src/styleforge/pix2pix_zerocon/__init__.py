"""pix2pix-zeroCon: pix2pix-zero with patch-wise contrastive guidance (Si et al., arXiv 2503.20484)."""

from .captioning import BlipCaptioner, resolve_caption
from .directions import (EditDirection, EmbeddingCache, direction_from_embeddings, direction_from_sentences,
                         load_embedding, prompt_variations, read_sentences, template_sentences)
from .losses import (PatchNCESettings, RegularizerSettings, autocorrelation_loss, cross_attention_loss, kl_divergence,
                     patch_nce_loss, regularize_noise)
from .pipeline import Pix2PixZeroConOutput, Pix2PixZeroConPipeline, load_inversion, save_inversion

__all__ = ["BlipCaptioner", "EditDirection", "EmbeddingCache", "PatchNCESettings", "Pix2PixZeroConOutput",
           "Pix2PixZeroConPipeline", "RegularizerSettings", "autocorrelation_loss", "cross_attention_loss",
           "direction_from_embeddings", "direction_from_sentences", "kl_divergence", "load_embedding", "load_inversion",
           "patch_nce_loss", "prompt_variations", "read_sentences", "regularize_noise", "resolve_caption", "save_inversion",
           "template_sentences"]
