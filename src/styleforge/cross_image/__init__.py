"""Cross-Image Attention for zero-shot appearance transfer (Alaluf et al., SIGGRAPH 2024)."""

from .pipeline import CrossImageAttentionOutput, CrossImageAttentionPipeline  # noqa: F401
