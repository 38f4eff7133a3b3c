"""styleforge: reference-based image stylization on one shared diffusion core.

Public classes are imported lazily so that ``import styleforge`` (and ``styleforge --help``) stays fast.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CrossImageAttentionPipeline": "styleforge.cross_image",
    "InversionPipeline": "styleforge.diffusion.pipeline",
    "OSASISPipeline": "styleforge.osasis",
    "OSASISTrainer": "styleforge.osasis",
    "StyleforgeError": "styleforge.errors",
    "InputError": "styleforge.errors",
    "ModelNotFoundError": "styleforge.errors",
    "OutputError": "styleforge.errors",
    "load_image": "styleforge.io",
    "load_mask": "styleforge.io",
    "save_image": "styleforge.io",
    "RegionStylizer": "styleforge.region.inference",
    "RegionEncoder": "styleforge.region.model",
    "RegionGenerator": "styleforge.region.model",
    "register_method": "styleforge.compare",
    "Pix2PixZeroConPipeline": "styleforge.pix2pix_zerocon",
    "PairCustomizationPipeline": "styleforge.pair_customization",
    "PairCustomizationTrainer": "styleforge.pair_customization",
    "PairCustomizationConfig": "styleforge.pair_customization",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
