"""The bundled region model and the README's main job: offline, from the files in the repository."""

from pathlib import Path

import numpy as np
from PIL import Image

from styleforge.cli.main import main
from styleforge.region.inference import BUNDLED_MODEL, RegionStylizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_bundled_model_is_small_and_documented():
    files = [p for p in BUNDLED_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20_000_000
    names = {p.relative_to(BUNDLED_MODEL).as_posix() for p in files}
    assert {"config.json", "PROVENANCE.md", "encoder/config.json", "generator/config.json",
            "encoder/diffusion_pytorch_model.safetensors", "generator/diffusion_pytorch_model.safetensors"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in names)  # safetensors only


def test_main_job_on_the_examples(tmp_path):
    out = tmp_path / "region_landscape.png"
    argv = ["region", "apply", "--content", str(EXAMPLES / "content_landscape.png"), "--style", str(EXAMPLES / "style_coffee.png"),
            "--mask", str(EXAMPLES / "mask_meadow.png"), "-o", str(out), "--offline", "--device", "cpu"]
    assert main(argv) == 0
    result = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    content = np.asarray(Image.open(EXAMPLES / "content_landscape.png").convert("RGB"), dtype=np.float64)
    assert result.shape == content.shape  # the photo's own size
    strip = Image.open(tmp_path / "region_landscape.strip.png")
    assert strip.height >= 512 and strip.width > 3 * strip.height
    # paste-back by default: the unmasked pixels are the photo's; the masked ones are restyled
    stylizer = RegionStylizer.from_pretrained()
    inside = stylizer.paste_weight(EXAMPLES / "mask_meadow.png", content.shape[1], content.shape[0]).numpy() > 0
    assert np.array_equal(result[~inside], content[~inside])
    assert np.abs(result - content)[inside].mean() > 10
