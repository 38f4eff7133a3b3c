"""Non-square inputs keep their aspect ratio (invert, appearance, translate); --crop asks for the square crop and
any crop is announced."""

import numpy as np
import pytest
from PIL import Image

from styleforge.cli.main import main
from styleforge.io import aspect_size, crop_pixels


@pytest.fixture
def wide(tmp_path):
    path = tmp_path / "wide.png"  # 3:2
    Image.fromarray((np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_aspect_size_and_crop_pixels():
    assert aspect_size((900, 600), 512, 64) == (768, 512)
    assert aspect_size((900, 600), 512, 64, fit="long") == (512, 320)
    assert aspect_size((10, 1000), 512, 64) == (512, 51200) and aspect_size((1000, 10), 64, 64, fit="long") == (64, 64)
    assert aspect_size((1600, 900), 512, 64) == (896, 512) and aspect_size((1600, 900), 512, 64, fit="long") == (512, 256)
    assert crop_pixels((900, 600), (768, 512)) == 0 and crop_pixels((900, 600), (512, 512)) == pytest.approx(256)


def test_invert_keeps_a_3_2_image_3_2_and_crop_asks_for_the_square(wide, tmp_path, tiny_sd1_folder, capsys):
    base = ["invert", str(wide), "--model", str(tiny_sd1_folder), "--steps", "2", "--kind", "ddim", "--no-cache"]
    assert main(base + ["-o", str(tmp_path / "a.safetensors"), "--reconstruction", str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size == (48, 32)  # the tiny model's 32 px on the shorter side
    assert "cropped" not in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "b.safetensors"), "--reconstruction", str(tmp_path / "b.png"), "--crop"]) == 0
    assert Image.open(tmp_path / "b.png").size == (32, 32)
    assert "centre-cropped" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "c.safetensors"), "--reconstruction", str(tmp_path / "c.png"), "--size", "48"]) == 0
    assert Image.open(tmp_path / "c.png").size == (72, 48)


def test_appearance_keeps_a_3_2_structure_3_2(wide, tmp_path, tiny_sd1_folder, capsys):
    square = tmp_path / "square.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 3) * 255).astype(np.uint8)).save(square)
    base = ["appearance", "--structure", str(wide), "--appearance", str(square), "--domain", "animal", "--model",
            str(tiny_sd1_folder), "--steps", "4", "--skip-steps", "1", "--swap-range-full", "0,3", "--swap-range-half",
            "0,3", "--adain-range", "1,3", "--no-cache"]
    assert main(base + ["--adain", "full", "-o", str(tmp_path / "t.png")]) == 0
    assert Image.open(tmp_path / "t.png").size == (48, 32)
    assert "appearance image (40x40) is centre-cropped" in capsys.readouterr().err  # to the structure's working size


def test_translate_keeps_a_3_2_image_3_2(wide, tmp_path, tiny_sd1_folder, monkeypatch):
    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "dog.png"
    assert main(["translate", str(wide), "--source", "cat", "--target", "dog", "--caption", "a photo of a cat",
                 "--model", str(tiny_sd1_folder), "--steps", "2", "--num-sentences", "4", "--size", "48",
                 "--cut-patch-sizes", "1", "--cut-num-patches", "8", "-o", str(out)]) == 0
    assert Image.open(out).size == (48, 32)  # translate's --size sets the longer side (pix2pix-zero's convention)


def test_very_elongated_images_are_refused_unless_cropped(tmp_path, tiny_sd1_folder, capsys):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (340, 20), (10, 200, 30)).save(strip)  # 17:1
    base = ["invert", str(strip), "--model", str(tiny_sd1_folder), "--steps", "2", "--kind", "ddim", "--no-cache"]
    assert main(base + ["-o", str(tmp_path / "a.safetensors")]) == 2
    assert "over the limit of 16:1" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "b.safetensors"), "--crop"]) == 0
