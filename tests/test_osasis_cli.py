"""``styleforge oneshot``: prepare, train (interrupted + --resume) and apply end to end on tiny models; align."""

import json

import numpy as np
import pytest
from PIL import Image

from styleforge.cli.main import main
from styleforge.io import read_metadata
from styleforge.osasis.align import ffhq_quad
from styleforge.osasis.tiny import tiny_clip, tiny_models


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("osasis_models")
    m = tiny_models()
    for name in ("diffae", "latent", "ddpm"):
        m[name].save_pretrained(root / name)
    tiny_clip().save_pretrained(root / "clip")
    rs = np.random.RandomState(0)
    Image.fromarray(rs.randint(0, 255, (5, 5, 3), dtype=np.uint8)).resize((48, 40), Image.BILINEAR).save(root / "art.png")
    (root / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rs.randint(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BILINEAR).save(root / "photos" / f"p{i}.png")
    return root


def test_prepare_train_resume_apply(folders, tmp_path, capsys):
    run, f = tmp_path / "run", folders
    assert main(["oneshot", "prepare", "--style", str(f / "art.png"), "-o", str(run), "--model", str(f / "ddpm"),
                 "--num-candidates", "2", "--steps", "10", "--lpips-weight", "0", "--device", "cpu", "--save-candidates"]) == 0
    assert Image.open(run / "style_photo.png").size == (32, 32) and len(list((run / "candidates").glob("*.png"))) == 2
    assert json.loads((run / "prepare.json").read_text())["num_candidates"] == 2
    train = ["oneshot", "train", "--style", str(f / "art.png"), "-o", str(run), "--model", str(f / "diffae"),
             "--latent", str(f / "latent"), "--clip", str(f / "clip"), "--lpips-weight", "0", "--iterations", "2",
             "--batch-size", "2", "--latent-steps", "5", "--content-steps", "3", "--encode-steps", "10",
             "--decode-steps", "4", "--plan", "official", "--spn-time-input", "grid_index", "--checkpoint-every", "1",
             "--sample-every", "1", "--no-progress", "--device", "cpu"]
    assert main(train + ["--stop-after", "1"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert (run / "ckpt" / "iter_000001.pt").exists() and not (run / "osasis.json").exists()
    assert main(train + ["--resume"]) == 0
    meta = json.loads((run / "osasis.json").read_text())
    assert meta["iteration"] == 2 and meta["spn_time_input"] == "grid_index" and (run / "model" / "unet_b").is_dir()
    assert (run / "samples" / "iter_000002.png").exists()
    out = tmp_path / "out"
    assert main(["oneshot", "apply", "--run", str(run), "--input", str(f / "photos"), "-o", str(out),
                 "--encode-steps", "10", "--decode-steps", "10", "--spn-weight", "0.2", "--device", "cpu"]) == 0
    files = sorted(out.glob("*.png"))
    assert [p.name for p in files] == ["p0.png", "p1.png"] and Image.open(files[0]).size == (32, 32)
    md = read_metadata(files[0])
    assert md["method"] == "osasis" and md["plan"] == "official" and md["spn_weight"] == 0.2
    # outputs exist: refused without --overwrite, before any work
    assert main(["oneshot", "apply", "--run", str(run), "--input", str(f / "photos"), "-o", str(out)]) == 2
    assert "output exists" in capsys.readouterr().err


def test_clear_errors(folders, tmp_path, capsys):
    assert main(["oneshot", "apply", "--input", str(folders / "photos"), "-o", str(tmp_path / "o")]) == 2
    assert "exactly one of --run" in capsys.readouterr().err
    assert main(["oneshot", "train", "--style", str(folders / "art.png"), "-o", str(tmp_path / "r"), "--style-photo",
                 str(folders / "art.png"), "--model", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "DiffAE weights not found" in err and err.count("\n") == 1
    assert main(["oneshot", "train", "--style", str(folders / "art.png"), "-o", str(tmp_path / "r2")]) == 2
    assert "oneshot prepare" in capsys.readouterr().err


def _landmarks():
    lm = np.zeros((68, 2))
    lm[36:42] = [30, 40]  # left eye
    lm[42:48] = [50, 40]  # right eye
    lm[48], lm[54] = [32, 60], [48, 60]  # mouth corners
    return lm


def test_align(tmp_path):
    q = ffhq_quad(_landmarks())
    side = np.linalg.norm(q[3] - q[0])
    assert np.isclose(side, 2 * max(2.0 * 20, 1.8 * 20)) and np.allclose(q.mean(0), [40, 42])  # centre 0.1 eye-to-mouth below
    rs = np.random.RandomState(1)
    Image.fromarray(rs.randint(0, 255, (80, 80, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    (tmp_path / "lm.json").write_text(json.dumps(_landmarks().tolist()))
    assert main(["oneshot", "align", "--input", str(tmp_path / "face.png"), "--landmarks", str(tmp_path / "lm.json"),
                 "--size", "64", "-o", str(tmp_path / "aligned.png")]) == 0
    assert Image.open(tmp_path / "aligned.png").size == (64, 64)


def test_apply_official_checkpoint(folders, tmp_path):
    """A released per-style ``iter_200.pt`` (``diffae_B`` incl. encoder + latent net, ``model_map``) runs as is."""
    import torch

    from styleforge.osasis.models import DiffAEAutoencoder, LatentDDIMNet, StructurePreservingNetwork, load_model
    from styleforge.osasis.pipeline import OSASISPipeline, StylizeSettings

    ae = load_model(DiffAEAutoencoder, folders / "diffae")
    torch.manual_seed(3)
    spn = StructurePreservingNetwork()  # official widths
    latent = {"latent_net." + k: v for k, v in load_model(LatentDDIMNet, folders / "latent").state_dict().items()
              if not k.startswith("conds_")}
    ckpt = tmp_path / "iter_200.pt"
    torch.save({"iter": 200, "diffae_B": {**ae.state_dict(), **latent}, "model_map": spn.state_dict(),
                "optim_diffae_B": {}, "optim_map": {}}, ckpt)
    out = tmp_path / "out"
    assert main(["oneshot", "apply", "--checkpoint", str(ckpt), "--model", str(folders / "diffae"), "--style",
                 str(folders / "art.png"), "--input", str(folders / "photos" / "p0.png"), "-o", str(out),
                 "--encode-steps", "10", "--decode-steps", "10"]) == 0
    pipe = OSASISPipeline.from_official(ckpt, diffae=folders / "diffae", style_image=folders / "art.png")
    assert pipe.spn_time_input == "grid_index" and pipe.unet_b.encoder is None
    ref = OSASISPipeline(ae, ae, spn, spn_time_input="grid_index")
    s = StylizeSettings(encode_steps=10, decode_steps=10)
    photo = folders / "photos" / "p0.png"
    assert torch.equal(pipe.stylize(photo, folders / "art.png", s), ref.stylize(photo, folders / "art.png", s))
    assert read_metadata(out / "p0.png")["checkpoint"] == str(ckpt)
