"""Hostile and careless input (issue 18): every refusal is one line naming the option or file, exits 2, leaves no
file behind and changes no input. One test per class of the issue, on tiny models."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.cli.main import main
from styleforge.errors import InputError

#: an exception class name (ValueError, UnpicklingError, SafetensorError, ...) must never reach the user
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b")
PROGRESS = re.compile(r"\d+%\|")  # tqdm progress bars are not messages


def _snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes' hash and mode: equal snapshots = nothing written, nothing changed."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, w: int = 40, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)).save(path)
    return path


def refused(argv, root: Path, capsys, *names: str) -> str:
    """Run ``argv``; assert exit 2, one line naming ``names`` without a class name, and no change under ``root``."""
    before = _snapshot(root)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("styleforge: error:"), err
    for name in names:
        assert str(name) in lines[0], lines[0]
    assert not CLASS_NAME.search(lines[0]), lines[0]
    assert _snapshot(root) == before, "a refused command wrote or changed a file"
    return lines[0]


@pytest.fixture
def pics(tmp_path):
    return {"a": _image(tmp_path / "in" / "a.png"), "b": _image(tmp_path / "in" / "b.png", seed=1)}


# ------------------------------------------------------------------------------------------- invalid numbers

INVALID = [
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--swap-guidance-scale", "nan"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--contrast-strength", "nan"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--num-seeds", "0"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--size", "0"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--size", "100000"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--attention-chunk-size", "-4"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--structure-injection-period", "0"),
    (["appearance", "--structure", "{a}", "--appearance", "{b}", "-o", "{o}"], "--swap-range-full", "90,10"),
    (["pair", "apply", "--style", "{a}", "--prompt", "x", "-o", "{o}"], "--style-scale", "nan"),
    (["pair", "apply", "--style", "{a}", "--prompt", "x", "-o", "{o}"], "--lora-scale", "inf"),
    (["pair", "apply", "--style", "{a}", "--prompt", "x", "-o", "{o}"], "--height", "0"),
    (["pair", "apply", "--style", "{a}", "--prompt", "x", "-o", "{o}"], "--width", "100000"),
    (["pair", "train", "--content", "{a}", "--styled", "{b}", "--style", "s", "-o", "{o}"], "--max-grad-norm", "nan"),
    (["oneshot", "prepare", "--style", "{a}", "-o", "{o}"], "--t0-ratio", "-0.5"),
    (["oneshot", "train", "--style", "{a}", "-o", "{o}"], "--spn-weight", "nan"),
    (["oneshot", "align", "--input", "{a}", "--landmarks", "{b}", "-o", "{o}"], "--size", "0"),
    (["region", "train", "--data", "{a}", "-o", "{o}"], "--checkpoint-every", "-1"),
    (["region", "train", "--data", "{a}", "-o", "{o}"], "--keep-checkpoints", "-1"),
    (["region", "apply", "--content", "{a}", "--style", "{b}", "-o", "{o}"], "--strength", "nan"),
    (["invert", "{a}", "-o", "{o}"], "--steps", "-1"),
    (["invert", "{a}", "-o", "{o}"], "--steps", "0"),
    (["translate", "{a}", "-o", "{o}"], "--guided-steps", "0.5,0.2"),
    (["compare", "{a}", "-o", "{o}"], "--size", "100000"),
]


@pytest.mark.parametrize("argv, flag, value", INVALID, ids=[f"{a[0]}{flag}={v}" for a, flag, v in INVALID])
def test_invalid_numbers_are_refused_by_name(argv, flag, value, pics, tmp_path, capsys):
    argv = [a.format(a=pics["a"], b=pics["b"], o=tmp_path / "out.png") for a in argv]
    line = refused(argv + [flag, value], tmp_path, capsys, flag, value)
    assert re.search(r"must (be|have)", line)  # says what is accepted


def test_python_api_refuses_the_same_values_with_the_same_words(sd1_components):
    from styleforge import validation as V
    from styleforge.cross_image import CrossImageAttentionPipeline
    from styleforge.region.inference import RegionStylizer

    pipe = CrossImageAttentionPipeline(**sd1_components)
    with pytest.raises(InputError, match=r"swap_guidance_scale must be a finite number, got nan"):
        pipe("a.png", "b.png", "cat", swap_guidance_scale=float("nan"))
    with pytest.raises(InputError, match=r"swap_range_full must have START <= END, got 90,10"):
        pipe("a.png", "b.png", "cat", swap_range_full=(90, 10))
    with pytest.raises(InputError, match=re.escape(f"strength must be {V.fraction.describe()}")):
        RegionStylizer.from_pretrained()("a.png", style="b.png", strength=float("nan"))
    # the CLI's words for the same value
    with pytest.raises(Exception, match=r"must be a finite number, got nan"):
        V.finite("nan")


def test_web_page_and_batch_read_the_same_checks_from_the_parsers():
    from styleforge.options import make_args, method_options

    strength = next(o for o in method_options("region") if o.dest == "strength")
    assert (strength.kind, strength.minimum, strength.maximum) == ("float", 0, 1)
    with pytest.raises(InputError, match=r"argument --strength: must be a finite number in \[0, 1\], got nan"):
        make_args("region", {"content": "a.png", "style": "b.png", "output": "o.png", "strength": "nan"})
    with pytest.raises(InputError, match=r"--swap-range-full: must have START <= END"):
        make_args("appearance", {"structure": "a.png", "appearance": "b.png", "output": "o.png",
                                 "swap_range_full": (90, 10)})


# ------------------------------------------------------------------------------------------- hangs

def test_extreme_aspect_ratios_are_refused_at_once(tmp_path, capsys):
    wide, tall = _image(tmp_path / "wide.png", 20000, 8), _image(tmp_path / "tall.png", 8, 20000)
    style = _image(tmp_path / "style.png")
    for content in (wide, tall):
        refused(["region", "apply", "--content", content, "--style", style, "-o", tmp_path / "o.png", "--device", "cpu"],
                tmp_path, capsys, "aspect ratio", "16:1")
        refused(["region", "interpolate", "--source", content, "--target", style, "-o", tmp_path / "g.png",
                 "--device", "cpu"], tmp_path, capsys, "aspect ratio")


# ------------------------------------------------------------------------------------------- OS errors

def test_os_errors_are_one_plain_line(pics, tmp_path, capsys, monkeypatch):
    from styleforge.errors import os_error_message

    (tmp_path / "file").write_text("x")
    base = ["region", "apply", "--content", pics["a"], "--style", pics["b"], "--device", "cpu", "--no-save-strip"]
    refused(base + ["-o", tmp_path / "file" / "out.png"], tmp_path, capsys, "parent", "is a file")
    # read-only file system (root ignores permissions, so the OS answer is simulated where the temporary file is made)
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system", str(tmp_path / ".out.png.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = refused(base + ["-o", tmp_path / "out.png"], tmp_path, capsys, "out.png")
    assert line.endswith(f"cannot write {tmp_path / 'out.png'}: read-only file system")
    assert os_error_message(OSError(28, "No space left on device", "/x/.out.png.k3j_9.tmp")) == \
        "no space left on device while writing /x/out.png (nothing was written)"


@contextlib.contextmanager
def full_disk(limit_bytes: int):
    """Files may not grow past ``limit_bytes`` (RLIMIT_FSIZE) while inside: a full disk as the writer sees it.

    Only the soft limit is lowered, so it is restored afterwards; SIGXFSZ is ignored so the write fails with EFBIG
    instead of killing the process. In-process rather than in a subprocess: a fresh interpreter spends most of a
    test's budget importing diffusers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_full_disk_leaves_nothing_behind(pics, tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(4):
        _image(data / f"img{i}.png", 48, 48, seed=i)
    big = _image(tmp_path / "in" / "big.png", 256, 256, seed=5)
    with full_disk(20_000):
        line = refused(["tiny-model", tmp_path / "model"], tmp_path, capsys, str(tmp_path / "model"), "nothing was written")
        refused(["region", "apply", "--content", big, "--style", pics["b"], "-o", tmp_path / "out.png", "--size", "256",
                 "--no-save-strip", "--device", "cpu"], tmp_path, capsys, str(tmp_path / "out.png"), "nothing was written")
    assert "file size limit" in line and not (tmp_path / "model").exists()
    # a training run: its first checkpoint does not fit; no temporary file or folder stays
    run = tmp_path / "run"
    before = _snapshot(tmp_path / "in")
    with full_disk(60_000):
        code = main([str(a) for a in ["region", "train", "--data", data, "--preset", "test", "-o", run, "--iterations", "2",
                                      "--checkpoint-every", "1", "--sample-every", "0", "--no-progress", "--device", "cpu"]])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was written" in err, err
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == [] and not list((run / "checkpoints").glob("step_*")) and not (run / "model").exists()
    assert _snapshot(tmp_path / "in") == before


# ------------------------------------------------------------------------------------------- atomic writes, modes

def test_modes_follow_the_umask_and_overwrite_keeps_them(pics, tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = ["region", "apply", "--content", pics["a"], "--style", pics["b"], "-o", out, "--device", "cpu", "--no-save-strip"]
    old = os.umask(0o027)
    try:
        assert main([str(a) for a in argv]) == 0
        assert out.stat().st_mode & 0o777 == 0o640
        out.chmod(0o604)
        assert main([str(a) for a in argv + ["--overwrite"]]) == 0
        assert out.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.png"]


def test_failed_commands_leave_no_partial_outputs(pics, tmp_path, capsys, osasis_folders):
    # compare: every pair fails, so the copied inputs and the outputs folder go too
    pairs = tmp_path / "pairs"
    _image(pairs / "content" / "x.png"), _image(pairs / "reference" / "x.png", seed=2)
    refused(["compare", pairs, "-o", tmp_path / "report", "--methods", "region", "--metrics", "none",
             "--method-option", f"region.mask={tmp_path / 'missing.png'}", "--device", "cpu"],
            tmp_path, capsys, "region")
    refused(["compare", pairs, "-o", tmp_path / "report", "--methods", "region", "--metrics", "none",
             "--method-option", "region.bogus=3"], tmp_path, capsys, "region.bogus", "unknown option")
    # oneshot train: a failure after the start writes no style.png into the run
    run, f = tmp_path / "run", osasis_folders
    refused(["oneshot", "train", "--style", f / "art.png", "--style-photo", pics["a"], "-o", run, "--model", f / "diffae",
             "--latent", f / "latent", "--clip", tmp_path / "no-clip", "--device", "cpu"], tmp_path, capsys, "no-clip")


# ------------------------------------------------------------------------------------------- outputs over inputs

def test_outputs_never_overwrite_inputs(pics, tmp_path, capsys):
    direction = tmp_path / "d.safetensors"
    direction.write_bytes(b"whatever")
    inversion = tmp_path / "inv.safetensors"
    inversion.write_bytes(b"whatever")
    base = ["translate", pics["a"], "-o", tmp_path / "o.png", "--overwrite"]
    refused(base + ["--direction", direction, "--save-direction", direction], tmp_path, capsys, "input", str(direction))
    refused(base + ["--inversion", inversion, "--save-inversion", inversion], tmp_path, capsys, "input", str(inversion))
    link = tmp_path / "link.png"
    link.symlink_to(pics["a"])
    refused(["region", "apply", "--content", pics["a"], "--style", pics["b"], "-o", link, "--overwrite"], tmp_path,
            capsys, "input")


# ------------------------------------------------------------------------------------------- unusable cache

def test_an_unusable_inversion_cache_warns_once_and_goes_on(pics, tmp_path, tiny_sd1_folder, capsys, monkeypatch):
    from styleforge.diffusion.inversion import InversionCache

    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path / "cache" / "sub"))
    monkeypatch.setattr(InversionCache, "_warned", set())
    out = tmp_path / "inv.safetensors"
    code = main(["invert", str(pics["a"]), "--model", str(tiny_sd1_folder), "--steps", "2", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and out.exists(), err
    warnings = [line for line in err.splitlines() if "inversion cache" in line]
    assert len(warnings) == 1 and "going on without it" in warnings[0] and not CLASS_NAME.search(warnings[0])


# ------------------------------------------------------------------------------------------- non-finite training

def test_training_stops_on_a_non_finite_loss_and_keeps_the_last_checkpoint(pics, tmp_path, tiny_sd1_folder, capsys,
                                                                           monkeypatch, osasis_folders):
    from styleforge.osasis import losses
    from styleforge.pair_customization.train import PairCustomizationTrainer

    real = PairCustomizationTrainer._phase_loss
    monkeypatch.setattr(PairCustomizationTrainer, "_phase_loss",
                        lambda self, phase, batch: real(self, phase, batch) * (float("nan") if self.iteration >= 1 else 1))
    style = tmp_path / "style"
    refused(["pair", "train", "--content", pics["a"], "--styled", pics["b"], "--style", "ink", "-o", style,
             "--model", tiny_sd1_folder, "--iterations", "3", "--style-start", "1", "--content-rank", "2",
             "--style-rank", "2", "--resolution", "32", "--checkpoint-every", "1", "--no-progress"],
            tmp_path / "in", capsys, "iteration 2", "not finite")
    assert [p.name for p in (style / "checkpoints").iterdir()] == ["iter-000001"]
    assert not (style / "style.safetensors").exists()

    from styleforge.osasis.train import OSASISTrainer

    real_batch, real_loss, seen = OSASISTrainer.content_batch, losses.OSASISLoss.__call__, {"batches": 0}

    def counting_batch(self):
        seen["batches"] += 1
        return real_batch(self)

    def nan_from_the_second_iteration(self, *a, **k):
        terms = real_loss(self, *a, **k)
        return {name: v * float("nan") for name, v in terms.items()} if seen["batches"] >= 2 else terms

    monkeypatch.setattr(OSASISTrainer, "content_batch", counting_batch)
    monkeypatch.setattr(losses.OSASISLoss, "__call__", nan_from_the_second_iteration)
    run = tmp_path / "run"
    refused(_oneshot_train(osasis_folders, run, pics) + ["--iterations", "3"], tmp_path / "in", capsys,
            "iteration 2", "not finite")
    assert [p.name for p in (run / "ckpt").iterdir()] == ["iter_000001.pt"] and not (run / "model").exists()


# ------------------------------------------------------------------------------------------- reproducibility

def _oneshot_train(f: Path, run: Path, pics) -> list:
    return ["oneshot", "train", "--style", f / "art.png", "--style-photo", pics["b"], "-o", run, "--model", f / "diffae",
            "--latent", f / "latent", "--clip", f / "clip", "--lpips-weight", "0", "--batch-size", "1",
            "--latent-steps", "2", "--content-steps", "2", "--encode-steps", "4", "--decode-steps", "2",
            "--checkpoint-every", "1", "--sample-every", "0", "--no-progress", "--device", "cpu", "--seed", "5"]


def test_oneshot_train_is_reproducible_and_resumes_bit_exactly(pics, tmp_path, osasis_folders, capsys):
    runs = {name: tmp_path / name for name in ("one", "two", "resumed")}
    for name in ("one", "two"):
        assert main([str(a) for a in _oneshot_train(osasis_folders, runs[name], pics) + ["--iterations", "2"]]) == 0
    argv = [str(a) for a in _oneshot_train(osasis_folders, runs["resumed"], pics) + ["--iterations", "2"]]
    assert main(argv + ["--stop-after", "1"]) == 0 and main(argv + ["--resume"]) == 0
    states = {k: torch.load(v / "ckpt" / "iter_000002.pt", weights_only=True) for k, v in runs.items()}
    for part in ("unet_b", "spn"):
        for other in ("two", "resumed"):
            assert states["one"][part].keys() == states[other][part].keys()
            assert all(torch.equal(t, states[other][part][k]) for k, t in states["one"][part].items()), (part, other)


# ------------------------------------------------------------------------------------------- damaged files

def test_damaged_files_are_named_as_such(pics, tmp_path, capsys, tiny_sd1_folder, tiny_sdxl_folder):
    from safetensors.torch import save_file

    from styleforge.diffusion.inversion import Inversion

    good = Inversion("edit_friendly", torch.zeros(3, 4, 4, 4), torch.tensor([10, 5]), torch.zeros(2, 4, 4, 4),
                     num_inference_steps=2, family="sd1")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"latents": good.latents, "timesteps": good.timesteps},
              str(unknown), metadata={"styleforge_inversion": json.dumps({**good.settings(), "bogus": 1})})
    no_latents = tmp_path / "no_latents.safetensors"
    save_file({"timesteps": good.timesteps}, str(no_latents),
              metadata={"styleforge_inversion": json.dumps(good.settings())})
    base = ["appearance", "--structure", pics["a"], "--appearance", pics["b"], "--domain", "cat", "--no-cache",
            "--device", "cpu", "-o", tmp_path / "o.png", "--steps", "2", "--skip-steps", "0", "--size", "32"]
    for bad in (unknown, no_latents):
        refused(base + ["--model", tiny_sd1_folder, "--structure-inversion", bad], tmp_path, capsys, str(bad), "damaged")
    sd1 = tmp_path / "sd1.safetensors"
    good.save(sd1)
    refused(base + ["--model", tiny_sdxl_folder, "--structure-inversion", sd1], tmp_path, capsys, "SD1", "SDXL")
    refused(base + ["--model", tiny_sd1_folder, "--structure-inversion", sd1, "--steps", "3"], tmp_path, capsys,
            "structure inversion", "3 steps")
    # a direction whose metadata is not JSON
    direction = tmp_path / "dir.safetensors"
    save_file({"delta": torch.zeros(1, 77, 32)}, str(direction), metadata={"styleforge_direction": "{not json"})
    refused(["translate", pics["a"], "--direction", direction, "--model", tiny_sd1_folder, "-o", tmp_path / "t.png",
             "--caption", "x", "--steps", "3", "--size", "32"], tmp_path, capsys, str(direction), "damaged")
    # region model folders: a config of garbage, swapped weights
    from styleforge.region.inference import BUNDLED_MODEL

    for name, damage in (("garbage", lambda m: (m / "encoder" / "config.json").write_text("\x00garbage")),
                         ("swapped", _swap_weights), ("top", lambda m: (m / "config.json").write_text("[1, 2"))):
        model = tmp_path / name
        shutil.copytree(BUNDLED_MODEL, model)
        damage(model)
        refused(["region", "apply", "--model", model, "--content", pics["a"], "--style", pics["b"], "-o",
                 tmp_path / "r.png", "--device", "cpu"], tmp_path, capsys, str(model), "damaged")


def _swap_weights(model: Path) -> None:
    enc, gen = model / "encoder" / "diffusion_pytorch_model.safetensors", model / "generator" / "diffusion_pytorch_model.safetensors"
    a, b = enc.read_bytes(), gen.read_bytes()
    enc.write_bytes(b), gen.write_bytes(a)


class _Payload:
    """A pickle that would create ``marker`` if it were ever unpickled for real."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_checkpoints_on_resume(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(4):
        _image(data / f"img{i}.png", 48, 48, seed=i)
    run = tmp_path / "run"
    argv = ["region", "train", "--data", data, "--preset", "test", "-o", run, "--checkpoint-every", "1", "--sample-every",
            "0", "--no-progress", "--device", "cpu", "--iterations"]
    assert main([str(a) for a in argv + ["1"]]) == 0
    argv += ["2"]
    step = run / "checkpoints" / "step_0000001"
    state = (step / "state.json").read_bytes()
    (step / "state.json").write_text("{corrupt")
    refused(argv + ["--resume"], tmp_path, capsys, "state.json", "damaged")
    (step / "state.json").write_bytes(state)
    marker = tmp_path / "pwned"
    with open(step / "optimizers.pt", "wb") as fh:
        pickle.dump({"opt_g": _Payload(marker)}, fh)
    line = refused(argv + ["--resume"], tmp_path, capsys, "optimizers.pt", "damaged")
    assert not marker.exists() and "weights_only" not in line


# ------------------------------------------------------------------------------------------- one line each

def test_every_refusal_is_a_single_line(pics, tmp_path, capsys, tiny_sd1_folder):
    data = pics["a"].read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    frames = [Image.new("RGB", (40, 40), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    base = ["region", "apply", "--style", pics["b"], "--device", "cpu", "--no-save-strip"]
    refused(base + ["--content", trunc, "-o", tmp_path / "o.png"], tmp_path, capsys, str(trunc))
    assert main([str(a) for a in base + ["--content", tmp_path / "anim.gif", "-o", tmp_path / "anim.png"]]) == 0
    assert capsys.readouterr().err == ""  # no "unclosed file" warning
    (tmp_path / "anim.png").unlink()
    # a malicious pickle as an embedding: PyTorch's multi-line explanation is not passed on
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    line = refused(["translate", pics["a"], "--direction", evil, "--model", tiny_sd1_folder, "-o", tmp_path / "t.png",
                    "--caption", "x", "--steps", "3", "--size", "32"], tmp_path, capsys, str(evil))
    assert not marker.exists() and "weights_only" not in line
    # a model folder with a missing weights file: one line naming the folder
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd1_folder, broken)
    next((broken / "unet").glob("*.safetensors")).unlink()
    refused(["invert", pics["a"], "--model", broken, "-o", tmp_path / "i.safetensors", "--no-cache"], tmp_path, capsys,
            str(broken))
    # ... and diffusers' own "An error occurred while trying to fetch ..." line before it is filtered out
    import logging

    from styleforge.cli.main import _quiet_libraries

    _quiet_libraries()
    handlers = logging.getLogger("diffusers").handlers
    record = logging.getLogger("diffusers.models.modeling_utils").makeRecord(
        "diffusers.models.modeling_utils", logging.ERROR, __file__, 1, "An error occurred while trying to fetch %s: %s",
        (str(broken), "no file"), None)
    other = logging.makeLogRecord({"name": "diffusers.x", "levelno": logging.ERROR, "msg": "something else"})
    assert handlers and not any(h.filter(record) for h in handlers) and all(h.filter(other) for h in handlers)


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def osasis_folders(tmp_path_factory):
    from styleforge.osasis.tiny import tiny_clip, tiny_models

    root = tmp_path_factory.mktemp("osasis_models")
    m = tiny_models()
    for name in ("diffae", "latent"):
        m[name].save_pretrained(root / name)
    tiny_clip().save_pretrained(root / "clip")
    _image(root / "art.png", 32, 32, seed=3)
    return root
