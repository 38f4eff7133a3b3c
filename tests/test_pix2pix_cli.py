"""``styleforge translate`` and ``styleforge direction build`` end to end on a tiny model folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.cli.main import main
from styleforge.io import read_metadata
from styleforge.pix2pix_zerocon import EditDirection


@pytest.fixture
def image(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cat.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 30, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_translate_end_to_end(image, tmp_path, tiny_sd1_folder, capsys):
    out = tmp_path / "dog.png"
    args = ["translate", str(image), "--source", "cat", "--target", "dog", "--caption", "a photo of a cat",
            "--model", str(tiny_sd1_folder), "--steps", "2", "--num-sentences", "8", "--seed", "1", "-o", str(out),
            "--save-reconstruction", "--save-log", str(tmp_path / "log.json"), "--save-direction", str(tmp_path / "d.pt"),
            "--cut-patch-sizes", "1", "--cut-num-patches", "32", "--guidance-mode", "paper"]
    assert main(args) == 0
    meta = read_metadata(out)
    assert meta["method"] == "pix2pix-zerocon" and meta["params"]["caption"] == "a photo of a cat"
    assert meta["params"]["cut_patch_sizes"] == [1] and meta["params"]["guidance_mode"] == "paper"
    assert Image.open(out).size == (24, 32) and Image.open(tmp_path / "dog.recon.png").size == (24, 32)
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log) == 2 and all(e["guided"] for e in log)
    assert torch.load(tmp_path / "d.pt", weights_only=True).shape == (1, 77, 32)
    assert list((tmp_path / "cache" / "directions").glob("*.safetensors"))  # the mean embeddings were cached
    # the same command again refuses to overwrite, before any work
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_direction_build_then_translate_as_pix2pix_zero(image, tmp_path, tiny_sd1_folder):
    (tmp_path / "src.txt").write_text("a photo of a cat\na cat on the sofa\n")
    (tmp_path / "tgt.txt").write_text("a photo of a dog\na dog on the sofa\n")
    direction = tmp_path / "cat2dog.safetensors"
    assert main(["direction", "build", "--sentences-source", str(tmp_path / "src.txt"), "--sentences-target",
                 str(tmp_path / "tgt.txt"), "--model", str(tiny_sd1_folder), "-o", str(direction)]) == 0
    d = EditDirection.load(direction)
    assert d.num_source == 2 and d.delta.shape == (1, 77, 32)
    out = tmp_path / "out.png"
    assert main(["translate", str(image), "--direction", str(direction), "--caption", "a photo of a cat",
                 "--contrastive-weight", "0", "--model", str(tiny_sd1_folder), "--steps", "2", "-o", str(out)]) == 0
    assert read_metadata(out)["method"] == "pix2pix-zero"


def test_translate_without_caption_or_blip_is_one_clear_line(image, tmp_path, tiny_sd1_folder, capsys):
    code = main(["translate", str(image), "--source", "cat", "--target", "dog", "--model", str(tiny_sd1_folder),
                 "--steps", "1", "--num-sentences", "4", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--caption" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_translate_with_no_edit_is_refused(image, tmp_path, tiny_sd1_folder, capsys):
    code = main(["translate", str(image), "--caption", "a cat", "--model", str(tiny_sd1_folder), "-o", str(tmp_path / "x.png")])
    assert code == 2 and "no edit given" in capsys.readouterr().err


def test_a_saved_inversion_is_edited_again_with_its_caption(image, tmp_path, tiny_sd1_folder):
    common = ["--source", "cat", "--target", "dog", "--sentence-source", "single", "--model", str(tiny_sd1_folder),
              "--steps", "2", "--seed", "4"]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(["translate", str(image), *common, "--caption", "a photo of a cat", "-o", str(first),
                 "--save-inversion", str(tmp_path / "x.safetensors")]) == 0
    # no --caption (and no BLIP here): the inversion's caption is used
    assert main(["translate", str(image), *common, "-o", str(again), "--inversion", str(tmp_path / "x.safetensors")]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert read_metadata(again)["params"]["caption"] == "a photo of a cat"
    assert main(["translate", str(image), *common[:-4], "--steps", "3", "-o", str(tmp_path / "bad.png"),
                 "--inversion", str(tmp_path / "x.safetensors")]) == 2
