"""PairCustomization: learn a style from one before/after image pair (Jones et al., 2024; spec pair_customization.md)."""

from .adapters import (CONTENT, DEFAULT_BASIS_SEED, DEFAULT_TARGETS, STYLE, UNetAdapters,  # noqa: F401
                       attach_pair_adapters, orthonormal_basis)
from .pipeline import SCHEDULERS, GuidanceState, PairCustomizationOutput, PairCustomizationPipeline  # noqa: F401
from .style_io import StyleAdapter, style_prompt  # noqa: F401
from .train import (PairCustomizationConfig, PairCustomizationTrainer, TrainResult,  # noqa: F401
                    train_pair_customization)
