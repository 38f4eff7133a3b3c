"""Size presets of the region-wise stylizer (spec §2.2 and §7).

A preset fixes the four networks' widths and the training settings that go with them. ``ref256`` is the
reference configuration (official SwapAE widths at 256 px); ``gpu128`` and ``cpu64`` are the reduced budgets of
spec §7; ``test`` (alias ``unit``) is a tiny model for unit tests only.
"""

from __future__ import annotations

import copy

from ..errors import InputError

PRESETS: dict[str, dict] = {
    "test": {
        "encoder": dict(image_size=32, channels=[4, 8, 16], content_channels=4, style_channels=[16, 16], style_dim=16),
        "generator": dict(content_channels=4, style_dim=16, head_channels=[8, 16], up_channels=[16, 8]),
        "discriminator": dict(image_size=32, channels=[8, 16, 16, 16]),
        "patch_discriminator": dict(patch_size=16, channels=[8, 16, 16], head_channels=[32, 32]),
        "train": dict(batch_size=4, n_crop=2, n_ref=2, ema_half_life_images=64),
    },
    "cpu64": {
        "encoder": dict(image_size=64, channels=[16, 32, 64, 128], content_channels=8, style_channels=[256, 256], style_dim=256),
        "generator": dict(content_channels=8, style_dim=256, head_channels=[64, 128], up_channels=[128, 64, 32]),
        "discriminator": dict(image_size=64, channels=[32, 64, 128, 128, 128]),
        "patch_discriminator": dict(patch_size=32, channels=[16, 32, 64, 128], head_channels=[512, 512, 256]),
        # short CPU runs: an EMA half-life of 10k images would average in the random initialisation
        "train": dict(batch_size=8, n_crop=4, n_ref=2, ema_half_life_images=800),
    },
    "gpu128": {
        "encoder": dict(image_size=128, channels=[16, 32, 64, 128, 256], content_channels=8, style_channels=[512, 512], style_dim=512),
        "generator": dict(content_channels=8, style_dim=512, head_channels=[128, 256], up_channels=[256, 256, 128, 64]),
        "discriminator": dict(image_size=128, channels=[64, 128, 256, 256, 256, 256]),
        "patch_discriminator": dict(patch_size=64, channels=[32, 64, 128, 256, 256], head_channels=[1024, 1024, 512]),
        "train": dict(batch_size=32, n_crop=8, n_ref=4, ema_half_life_images=4000),
    },
    "ref256": {
        "encoder": dict(image_size=256, channels=[32, 64, 128, 256, 512], content_channels=8, style_channels=[1024, 2048], style_dim=2048),
        "generator": dict(content_channels=8, style_dim=2048, head_channels=[256, 512], up_channels=[512, 512, 256, 128]),
        "discriminator": dict(image_size=256, channels=[128, 256, 512, 512, 512, 512, 512]),
        "patch_discriminator": dict(patch_size=128, channels=[32, 64, 128, 256, 384, 384], head_channels=[2048, 2048, 1024]),
        "train": dict(batch_size=16, n_crop=8, n_ref=8, ema_half_life_images=10000),
    },
}
PRESET_ALIASES = {"unit": "test", "reference": "ref256", "256": "ref256"}
PRESET_NAMES = tuple(PRESETS) + tuple(PRESET_ALIASES)


def get_preset(name: str) -> dict:
    """A deep copy of the named preset (aliases accepted)."""
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    preset = copy.deepcopy(PRESETS[key])
    preset["name"] = key
    return preset
