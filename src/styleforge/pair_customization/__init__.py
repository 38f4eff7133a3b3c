"""PairCustomization: learn a style from one before/after image pair (Jones et al., 2024; spec pair_customization.md)."""

from .._lazy import lazy_exports

# public name -> module defining it (imported on first use: the CLI reads constants without loading torch)
_EXPORTS = {
    "CONTENT": ".adapters",
    "DEFAULT_BASIS_SEED": ".adapters",
    "DEFAULT_TARGETS": ".adapters",
    "STYLE": ".adapters",
    "UNetAdapters": ".adapters",
    "attach_pair_adapters": ".adapters",
    "orthonormal_basis": ".adapters",
    "SCHEDULERS": ".pipeline",
    "GuidanceState": ".pipeline",
    "PairCustomizationOutput": ".pipeline",
    "PairCustomizationPipeline": ".pipeline",
    "StyleAdapter": ".style_io",
    "style_prompt": ".style_io",
    "PairCustomizationConfig": ".train",
    "PairCustomizationTrainer": ".train",
    "TrainResult": ".train",
    "train_pair_customization": ".train",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
