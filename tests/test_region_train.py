"""Region stylizer training mechanics (spec §8 E): step isolation, EMA, resume, data handling, CLI."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from styleforge.cli.main import main
from styleforge.errors import InputError
from styleforge.region.train import RegionTrainer, TrainConfig, ema_decay, train, update_ema


@pytest.fixture()
def data_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rs = np.random.RandomState(0)
    for i in range(4):
        # smooth random images (upsampled noise) so there is something to reconstruct
        small = rs.randint(0, 255, (6, 7, 3), dtype=np.uint8)
        Image.fromarray(small).resize((56, 48), Image.BILINEAR).save(folder / f"img{i}.png")
    return folder


def _config(data_folder, tmp_path, name="run", **kw):
    base = dict(data=str(data_folder), output=str(tmp_path / name), preset="test", iterations=4, reg_interval=2,
                r1_interval=2, sample_every=0, checkpoint_every=0, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_d_step_and_g_step_touch_only_their_networks(data_folder, tmp_path):
    trainer = RegionTrainer(_config(data_folder, tmp_path))
    rng = torch.Generator().manual_seed(0)
    from styleforge.region.train import sample_batch

    real = sample_batch(trainer.images, 4, 32, rng)
    names = ("encoder", "generator", "discriminator", "patch_discriminator")
    before = {n: _snapshot(getattr(trainer, n)) for n in names}
    trainer.discriminator_step(real, 0, rng)
    changed = {n: _changed(before[n], getattr(trainer, n)) for n in names}
    assert changed == {"encoder": False, "generator": False, "discriminator": True, "patch_discriminator": True}
    before = {n: _snapshot(getattr(trainer, n)) for n in names}
    logs = trainer.generator_step(real, 0, rng)
    changed = {n: _changed(before[n], getattr(trainer, n)) for n in names}
    assert changed == {"encoder": True, "generator": True, "discriminator": False, "patch_discriminator": False}
    assert {"rec", "G", "Gco", "CC", "CA"} <= set(logs)


def test_full_step_with_regularisers_is_finite_and_fast(data_folder, tmp_path):
    trainer = RegionTrainer(_config(data_folder, tmp_path))
    trainer.train_step(1)  # warm-up (no regulariser at odd steps with K = 2)
    t0 = time.perf_counter()
    logs = trainer.train_step(0)  # K and R1 both fire at step 0
    assert time.perf_counter() - t0 < 2.0
    assert {"D", "Dco", "R1", "R1co", "rec", "G", "Gco", "CC", "CA"} <= set(logs)
    assert all(np.isfinite(v) for v in logs.values())
    logs = trainer.train_step(3)
    assert "CC" not in logs and "CA" not in logs and "R1" not in logs


def test_ema_endpoints():
    torch.manual_seed(0)
    live, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = _snapshot(ema)
    update_ema(ema, live, 1.0)
    assert not _changed(before, ema)
    update_ema(ema, live, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), live.state_dict().values()))
    assert ema_decay(8, 8) == 0.5 and ema_decay(8, 0) == 0.0


def test_resume_equals_an_uninterrupted_run(data_folder, tmp_path):
    train(_config(data_folder, tmp_path, "straight", iterations=5))
    train(_config(data_folder, tmp_path, "split", iterations=2))
    train(_config(data_folder, tmp_path, "split", iterations=5, resume="latest"))
    for net in ("encoder", "generator", "discriminator", "patch_discriminator", "encoder_ema", "generator_ema"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "step_0000005" / net / "diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / "split" / "checkpoints" / "step_0000005" / net / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), net
    # and a run with another seed differs (the comparison above is not vacuous)
    train(_config(data_folder, tmp_path, "other", iterations=5, seed=1))
    a = load_file(tmp_path / "straight" / "checkpoints" / "step_0000005" / "encoder" / "diffusion_pytorch_model.safetensors")
    c = load_file(tmp_path / "other" / "checkpoints" / "step_0000005" / "encoder" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupt_saves_a_checkpoint_and_resume_rewrites_the_log(data_folder, tmp_path):
    import json

    trainer = RegionTrainer(_config(data_folder, tmp_path, iterations=6, log_every=1))
    original = trainer.train_step

    def interrupted(step):
        if step == 3:
            raise KeyboardInterrupt
        return original(step)

    trainer.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    with open(tmp_path / "run" / "log.jsonl", "a") as f:  # a line from work that the checkpoint does not hold
        f.write(json.dumps({"step": 4, "rec": 0.0}) + "\n")
    train(_config(data_folder, tmp_path, iterations=6, log_every=1, resume="latest"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_unusable_files_are_skipped_and_reported(data_folder, tmp_path, capsys):
    (data_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data_folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (12, 12)).save(data_folder / "tiny.png")
    (data_folder / "notes.txt").write_text("not an image, and not reported")
    model = train(_config(data_folder, tmp_path, iterations=2))
    assert (model / "encoder" / "config.json").exists()
    skipped = (tmp_path / "run" / "skipped.txt").read_text()
    assert all(name in skipped for name in ("broken.png", "empty.jpg", "tiny.png"))
    assert "notes.txt" not in skipped
    err = capsys.readouterr().err
    assert "skipped 3 unusable file(s)" in err and "training on 4 image(s)" in err


def test_no_usable_images_is_a_user_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "tiny.png")
    with pytest.raises(InputError):
        train(TrainConfig(data=str(folder), output=str(tmp_path / "run"), preset="test", iterations=1, progress=False))


def test_cli_train_checkpoints_samples_and_model(data_folder, tmp_path):
    run = tmp_path / "run"
    argv = ["region", "train", "--data", str(data_folder), "--preset", "test", "-o", str(run), "--iterations", "4",
            "--sample-every", "2", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--reg-interval", "2",
            "--content-channels", "3", "--style-gain", "2", "--no-progress"]
    assert main(argv) == 0
    generator_config = json.loads((run / "checkpoints" / "step_0000004" / "generator" / "config.json").read_text())
    assert generator_config["content_channels"] == 3 and generator_config["style_gain"] == 2.0
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000003", "step_0000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert (run / "samples" / "step_0000002.png").exists() and (run / "samples" / "step_0000004.png").exists()
    assert (run / "log.jsonl").read_text().strip()
    assert not list(run.rglob(".tmp*"))  # checkpoints were written atomically
    assert main(argv) == 2  # an existing run is not overwritten without --resume
    assert main(argv[:-1] + ["--iterations", "5", "--resume", "--no-progress"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000005"
    out = tmp_path / "out.png"
    img = str(next(data_folder.glob("*.png")))
    assert main(["region", "apply", "--model", str(run), "--content", img, "--style", img, "-o", str(out), "--device", "cpu"]) == 0
    assert out.exists()


@pytest.mark.slow
def test_overfitting_lowers_reconstruction_loss(data_folder, tmp_path):
    # reconstruction-driven smoke test: fixed crops, adversarial terms off (they fight L_rec in the first steps);
    # 300 steps because the zero-bias input modulation starts the content path small (loss ratio ~0.57 here)
    config = _config(data_folder, tmp_path, iterations=300, crop_scale=(1.0, 1.0), w_gan=0.0, w_cooccur=0.0, r1_interval=16)
    trainer = RegionTrainer(config)
    from styleforge.region.train import center_batch

    fixed = center_batch(trainer.images, 4, 32)

    def rec_loss():
        with torch.no_grad():
            trainer.generator.eval()
            loss = (trainer.generator(*trainer.encoder(fixed)) - fixed).abs().mean().item()
            trainer.generator.train()
            return loss

    before = rec_loss()
    for step in range(300):
        trainer.train_step(step)
    assert rec_loss() < 0.7 * before


def test_architecture_overrides_reach_the_networks_and_must_match_on_resume(data_folder, tmp_path):
    trainer = RegionTrainer(_config(data_folder, tmp_path, "arch", style_gain=3.0, content_channels=2))
    assert trainer.generator.config.style_gain == 3.0 and trainer.generator_ema.config.style_gain == 3.0
    assert trainer.encoder.config.content_channels == trainer.generator.config.content_channels == 2
    with torch.no_grad():
        content, _ = trainer.encoder(torch.zeros(1, 3, 32, 32))
    assert content.shape[1] == 2
    train(_config(data_folder, tmp_path, "arch", iterations=1, style_gain=3.0, content_channels=2))
    with pytest.raises(InputError, match="style_gain"):
        train(_config(data_folder, tmp_path, "arch", iterations=2, content_channels=2, resume="latest"))
    with pytest.raises(InputError, match="content_channels"):
        train(_config(data_folder, tmp_path, "arch", iterations=2, style_gain=3.0, resume="latest"))
    with pytest.raises(InputError, match="content-channels"):
        RegionTrainer(_config(data_folder, tmp_path, "bad", content_channels=0))
