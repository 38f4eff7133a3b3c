import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

from styleforge.cli.main import build_parser, main
from styleforge.io import read_metadata


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_lists_every_subcommand_with_a_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, sub in _subcommands().items():
        assert name in out
        assert sub.description


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_help_with_defaults(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: styleforge " + name in out


def test_missing_model_is_one_line_and_exit_2(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(img)
    proc = subprocess.run([sys.executable, "-m", "styleforge.cli.main", "invert", str(img), "-o", str(tmp_path / "x"),
                           "--model", "nobody/missing-model", "--offline"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "nobody/missing-model" in lines[0] and "--model" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_inputs_exit_2_without_traceback(tmp_path, tiny_sd1_folder, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["invert", str(tmp_path / "bad.png"), "-o", str(tmp_path / "x"), "--model", str(tiny_sd1_folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an image" in err


def test_invert_end_to_end_on_a_tiny_model_folder(tmp_path, tiny_sd1_folder):
    img = tmp_path / "in.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 30, 3) * 255).astype(np.uint8)).save(img)
    out, recon = tmp_path / "inv.safetensors", tmp_path / "recon.png"
    args = ["invert", str(img), "--model", str(tiny_sd1_folder), "--prompt", "a cat", "--steps", "4", "--seed", "3",
            "-o", str(out), "--reconstruction", str(recon), "--no-cache"]
    assert main(args) == 0
    from styleforge.diffusion.inversion import Inversion

    inv = Inversion.load(out)
    assert inv.seed == 3 and inv.prompt == "a cat" and inv.num_inference_steps == 4
    meta = read_metadata(recon)
    assert meta["method"] == "inversion-reconstruction" and meta["model"] == str(tiny_sd1_folder)
    assert meta["params"]["seed"] == 3
    assert main(args) == 2  # outputs exist: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0


def test_tiny_model_command(tmp_path):
    assert main(["tiny-model", str(tmp_path / "m"), "--family", "sdxl"]) == 0
    assert (tmp_path / "m" / "model_index.json").exists() and (tmp_path / "m" / "text_encoder_2").is_dir()
    assert main(["tiny-model", str(tmp_path / "m")]) == 2


def test_tiny_model_osasis_set_loads_in_the_oneshot_commands(tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    from styleforge.osasis.losses import CLIPEmbedder
    from styleforge.osasis.models import ADMUNet, DiffAEAutoencoder, LatentDDIMNet, load_model

    assert main(["tiny-model", str(tmp_path / "o"), "--family", "osasis"]) == 0
    for cls, name in ((ADMUNet, "ddpm"), (DiffAEAutoencoder, "diffae"), (LatentDDIMNet, "latent")):
        assert isinstance(load_model(cls, tmp_path / "o" / name), cls)
    clip = CLIPEmbedder(CLIPModel.from_pretrained(tmp_path / "o" / "clip"), AutoTokenizer.from_pretrained(tmp_path / "o" / "clip"))
    texts = clip.text(["face", "smiling face"])
    assert texts.shape[0] == 2 and not torch.allclose(texts[0], texts[1])
    assert clip(torch.zeros(1, 3, 32, 32)).shape == (1, texts.shape[1])


def test_architecture_errors_name_the_model(tiny_sdxl_folder, capsys):
    out = str(tiny_sdxl_folder)
    assert main(["translate", "x.png", "--source", "cat", "--target", "dog", "--caption", "a cat", "--model", out,
                 "-o", "never.png"]) == 2
    err = capsys.readouterr().err
    assert f"model {out!r} is SDXL-shaped" in err and "components" not in err


def test_old_flag_spellings_still_work_with_a_deprecation_warning(tmp_path, capsys):
    from styleforge.cli.main import _boolean_flags, modernise_argv

    flags = _boolean_flags(build_parser())
    argv, notes = modernise_argv(["region", "apply", "--strip", "false", "--quiet", "--contrast-clip=no",
                                  "--kind", "edit-friendly", "--no-cache", "--save-strip"], flags)
    assert argv == ["region", "apply", "--no-save-strip", "--no-progress", "--no-contrast-clip", "--kind",
                    "edit_friendly", "--no-cache", "--save-strip"]
    assert len(notes) == 4 and all("deprecated" in n for n in notes)
    # every boolean is a --flag/--no-flag pair, and no two commands spell one concept differently
    assert {"--cache", "--progress", "--save-strip", "--crop", "--overwrite"} <= flags
    assert not flags & {"--quiet", "--strip", "--no-cache", "--no-progress"}
    # end to end: the old spelling runs and says what to type instead, on one line
    assert main(["tiny-model", str(tmp_path / "m"), "--overwrite", "false"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "styleforge: warning: `--overwrite false` is deprecated; use --no-overwrite"


def test_dtype_auto_is_half_on_cuda_and_fp32_elsewhere(monkeypatch):
    """--dtype defaults to auto for inference (fp16 on a CUDA GPU, as diffusers users pass it) and fp32 for training."""
    import torch

    from styleforge import options
    from styleforge.runtime import resolve_dtype

    assert options.make_args("region", {"content": "a.png", "style": "s.png", "output": "o.png"}).dtype == "auto"
    assert options.command_parser("pair-train").get_default("dtype") == "fp32"
    assert options.command_parser("oneshot-train").get_default("dtype") == "fp32"
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("auto", "auto") == torch.float16
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16", "cuda") == torch.bfloat16
