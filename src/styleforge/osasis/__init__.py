"""OSASIS: one-shot structure-aware stylized image synthesis on a diffusion autoencoder (Cho et al., CVPR 2024).

Stage 0 (:mod:`.prepare`): a photo-like counterpart of the artwork from a pixel DDPM. Stage 1 (:mod:`.train`):
fine-tune a copy of DiffAE's UNet and the structure-preserving network on that one artwork. Stage 2
(:mod:`.pipeline`): stylize photos with semantic-code mixing; optional text-driven manipulation.
"""

from .losses import CLIPEmbedder, LossWeights, OSASISLoss  # noqa: F401
from .models import (ADMUNet, DiffAEAutoencoder, LatentDDIMNet, PlainSPN, StructurePreservingNetwork,  # noqa: F401
                     load_model)
from .pipeline import EditSettings, OSASISPipeline, StylizeSettings  # noqa: F401
from .prepare import PrepareSettings, prepare_style_photo  # noqa: F401
from .schedule import NoiseSchedule, TimestepPlan  # noqa: F401
from .train import OSASISTrainer, TrainConfig  # noqa: F401
