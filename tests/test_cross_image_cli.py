import numpy as np
from PIL import Image

from styleforge.cli.main import main
from styleforge.io import read_metadata


def test_appearance_cli_end_to_end(tmp_path, tiny_sd1_folder, capsys):
    s, a = tmp_path / "s.png", tmp_path / "a.png"
    Image.fromarray((np.random.RandomState(0).rand(48, 40, 3) * 255).astype(np.uint8)).save(s)
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 4) * 255).astype(np.uint8)).save(a)  # RGBA input
    out = tmp_path / "o" / "t.png"
    base = ["appearance", "--structure", str(s), "--appearance", str(a), "--domain", "animal", "--model",
            str(tiny_sd1_folder), "--steps", "10", "--skip-steps", "2", "--swap-range-full", "1,9", "--swap-range-half",
            "1,7", "--adain-range", "3,10", "--no-cache"]
    args = base + ["-o", str(out), "--save-strip", "--save-reconstructions"]
    assert main(args) == 0
    assert "warning" in capsys.readouterr().err  # random nets segment nothing: the fallback is announced
    for name in ("t.png", "t.strip.png", "t.structure_recon.png", "t.appearance_recon.png"):
        assert (tmp_path / "o" / name).exists()
    assert Image.open(tmp_path / "o" / "t.strip.png").size == (96, 32)
    meta = read_metadata(out)
    assert meta["method"] == "cross-image-attention" and meta["params"]["seed"] == 42
    assert meta["params"]["swap_range_full"] == [1, 9] and meta["params"]["contrast_strength"] == 1.67
    assert main(args) == 2  # existing outputs are kept
    seeds = base + ["-o", str(tmp_path / "m.png"), "--num-seeds", "2", "--adain", "full"]
    assert main(seeds) == 0
    assert (tmp_path / "m.seed42.png").exists() and (tmp_path / "m.seed43.png").exists()


def test_appearance_cli_reuses_a_precomputed_inversion(tmp_path, tiny_sd1_folder):
    s = tmp_path / "s.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)).save(s)
    inv = tmp_path / "s.inv.safetensors"
    assert main(["invert", str(s), "--model", str(tiny_sd1_folder), "--prompt", "A photo of a animal", "--steps", "10",
                 "--guidance-scale", "3.5", "-o", str(inv), "--no-cache"]) == 0
    common = ["appearance", "--structure", str(s), "--appearance", str(s), "--domain", "animal", "--model",
              str(tiny_sd1_folder), "--steps", "10", "--skip-steps", "2", "--adain", "off", "--freeu", "off", "--no-cache"]
    assert main(common + ["--structure-inversion", str(inv), "-o", str(tmp_path / "r.png")]) == 0
    assert main(common + ["--structure-inversion", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.png")]) == 2
