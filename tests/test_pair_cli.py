"""``styleforge pair train`` then ``pair apply`` end to end on a tiny model folder, with a resume in between."""

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from styleforge.cli.main import main
from styleforge.io import read_metadata


def test_pair_train_resume_apply_end_to_end(tmp_path, tiny_sd1_folder, tiny_sdxl_folder, capsys):
    rng = np.random.RandomState(0)
    content, styled = tmp_path / "photo.png", tmp_path / "painting.png"
    Image.fromarray((rng.rand(48, 40, 3) * 255).astype(np.uint8)).save(content)
    Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(styled)
    style_dir = tmp_path / "mystyle"
    train = ["pair", "train", "--content", str(content), "--styled", str(styled), "--style", "digital illustration",
             "-o", str(style_dir), "--model", str(tiny_sd1_folder), "--style-start", "2", "--content-rank", "4",
             "--style-rank", "4", "--resolution", "32", "--lr", "1e-3", "--checkpoint-every", "2", "--quiet"]
    assert main(train + ["--iterations", "3", "--validate-at", "2", "--validation-steps", "2"]) == 0
    assert (style_dir / "validation" / "iter-000002.png").exists()
    assert main(train + ["--iterations", "5"]) == 2  # an earlier run's checkpoints are not silently mixed in
    assert "--resume" in capsys.readouterr().err
    assert main(train + ["--iterations", "5", "--resume"]) == 0  # continues from iteration 3
    resumed = load_file(str(style_dir / "style.safetensors"))
    straight = tmp_path / "straight"
    assert main([a if a != str(style_dir) else str(straight) for a in train] + ["--iterations", "5"]) == 0
    uninterrupted = load_file(str(straight / "style.safetensors"))
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    meta = json.loads((style_dir / "style.json").read_text())
    assert meta["iterations_trained"] == 5 and meta["family"] == "sd1" and meta["training"]["style_start"] == 2

    out = tmp_path / "out" / "dog.png"
    apply = ["pair", "apply", "--style", str(style_dir), "--prompt", "a photo of a dog", "--steps", "4", "--seed", "3"]
    assert main(apply + ["-o", str(out), "--save-base", "--style-scale", "4"]) == 0  # model taken from the style
    assert out.exists() and (tmp_path / "out" / "dog.base.png").exists()
    params = read_metadata(out)["params"]
    assert params["style_scale"] == {"mystyle": 4.0} and params["seed"] == 3 and params["num_inference_steps"] == 4
    assert main(apply + ["-o", str(out)]) == 2  # an existing output is kept
    blend = apply + ["--style", str(straight), "--style-scale", "2", "1", "-o", str(tmp_path / "blend.png"),
                     "--scheduler", "euler", "--guidance-scale", "5"]
    assert main(blend) == 0
    photo = apply + ["--image", str(content), "-o", str(tmp_path / "photo_styled.png"), "--no-cache", "--save-base"]
    assert main(photo) == 0 and (tmp_path / "photo_styled.base.png").exists()
    wrong_family = apply + ["--model", str(tiny_sdxl_folder), "-o", str(tmp_path / "x.png")]
    assert main(wrong_family) == 2
    assert "cannot be used with the SDXL model" in capsys.readouterr().err
    assert main(["pair", "apply", "--style", str(tmp_path / "missing"), "--prompt", "x", "-o", str(tmp_path / "y.png")]) == 2
    bad_prompt = train + ["--iterations", "3", "--content-prompt", "a photo of a dog", "-o", str(tmp_path / "z")]
    assert main(bad_prompt) == 2
    assert "must contain the identifier token 'sbu'" in capsys.readouterr().err
