"""OSASIS: one-shot structure-aware stylized image synthesis on a diffusion autoencoder (Cho et al., CVPR 2024).

Stage 0 (:mod:`.prepare`): a photo-like counterpart of the artwork from a pixel DDPM. Stage 1 (:mod:`.train`):
fine-tune a copy of DiffAE's UNet and the structure-preserving network on that one artwork. Stage 2
(:mod:`.pipeline`): stylize photos with semantic-code mixing; optional text-driven manipulation.
"""

from .._lazy import lazy_exports

# public name -> module defining it (imported on first use: the CLI reads constants without loading torch)
_EXPORTS = {
    "CLIPEmbedder": ".losses",
    "LossWeights": ".config",
    "OSASISLoss": ".losses",
    "ADMUNet": ".models",
    "DiffAEAutoencoder": ".models",
    "LatentDDIMNet": ".models",
    "PlainSPN": ".models",
    "StructurePreservingNetwork": ".models",
    "load_model": ".models",
    "EditSettings": ".pipeline",
    "OSASISPipeline": ".pipeline",
    "StylizeSettings": ".pipeline",
    "PrepareSettings": ".prepare",
    "prepare_style_photo": ".prepare",
    "NoiseSchedule": ".schedule",
    "TimestepPlan": ".schedule",
    "OSASISTrainer": ".train",
    "TrainConfig": ".config",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
