"""OSASIS stage 1: what is trained, the per-step schedule, branch weights, checkpoints and resume (spec §9 31-35)."""

import json

import pytest
import torch

import styleforge.osasis.train as train_mod
from styleforge.errors import InputError, OutputError
from styleforge.osasis.pipeline import OSASISPipeline, StylizeSettings
from styleforge.osasis.tiny import TINY_SPN, StubEmbedder, StubPerceptual, tiny_models
from styleforge.osasis.train import OSASISTrainer, TrainConfig, make_spn
from styleforge.osasis.models import StructurePreservingNetwork

SMALL = dict(batch_size=2, latent_steps=5, content_steps=3, encode_steps=10, decode_steps=4, plan="official",
             checkpoint_every=1, sample_every=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    style = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    return style, (style * 0.5 + 0.2 * torch.rand(1, 3, 32, 32, generator=g)).clamp(-1, 1)


def _trainer(tmp, images, iterations=2, **kw):
    m = tiny_models()
    torch.manual_seed(123)
    spn = StructurePreservingNetwork(**TINY_SPN)
    config = TrainConfig(iterations=iterations, **{**SMALL, **kw})
    return OSASISTrainer(config, m["diffae"], m["latent"], StubEmbedder(), StubPerceptual(), images[0], images[1], tmp,
                         spn=spn, run_metadata={"diffae": "unused"}), m


def test_one_iteration_trains_only_eps_b_and_the_spn(tmp_path, images):
    tr, m = _trainer(tmp_path, images, iterations=1)
    a_before = {k: v.clone() for k, v in tr.unet_a.state_dict().items()}
    b_before = {k: v.clone() for k, v in tr.unet_b.state_dict().items()}
    s_before = {k: v.clone() for k, v in tr.spn.state_dict().items()}
    record = tr.train_iteration()
    assert set(record) >= {"cross", "in", "l1", "lpips", "clip", "total"}
    assert all(torch.equal(v, a_before[k]) for k, v in tr.unet_a.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in tr.unet_a.parameters())  # eps_A and the encoder frozen
    assert tr.unet_b.encoder is None  # eps_B carries no encoder/latent copy to leak gradients into
    assert any(not torch.equal(v, b_before[k]) for k, v in tr.unet_b.state_dict().items())
    assert any(not torch.equal(v, s_before[k]) for k, v in tr.spn.state_dict().items())
    steps = len(tr.plan.decode_transitions())
    assert steps == 2  # decode grid 4, r = 0.5, official plan
    assert all(int(s["step"]) == steps for s in tr.opt_unet.state_dict()["state"].values())  # one update per decode step
    assert all(int(s["step"]) == steps for s in tr.opt_spn.state_dict()["state"].values())
    assert all(t.grad_fn is None for t in tr.last_samples)  # carried states are detached


def test_branch_weights_official_and_paper(tmp_path, images, monkeypatch):
    seen = []
    real = train_mod.spn_decode_step

    def spy(*a, **kw):
        seen.append(kw["spn_weight"])
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "spn_decode_step", spy)
    tr, _ = _trainer(tmp_path / "a", images, iterations=1, spn_weight=0.1)
    tr.train_iteration()
    assert seen == [1.0, 0.1, 1.0, 0.1]  # style branch 1.0, content branch lambda
    seen.clear()
    tr, _ = _trainer(tmp_path / "b", images, iterations=1, spn_weight=0.1, style_spn_weight=0.1)
    tr.train_iteration()
    assert seen == [0.1] * 4


def test_resume_equals_an_uninterrupted_run(tmp_path, images):
    full, _ = _trainer(tmp_path / "full", images)
    full.train(progress=False)
    part, _ = _trainer(tmp_path / "part", images)
    part.train(progress=False, stop_after=1)
    assert part.iteration == 1 and not (tmp_path / "part" / "osasis.json").exists()
    with pytest.raises(OutputError, match="--resume"):
        _trainer(tmp_path / "part", images)[0].train(progress=False)
    resumed, _ = _trainer(tmp_path / "part", images)
    resumed.train(progress=False, resume=True)
    assert resumed.iteration == 2
    for a, b in ((full.unet_b, resumed.unet_b), (full.spn, resumed.spn)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert full.history == resumed.history  # same seed: identical losses, iteration by iteration
    assert full.history[0]["total"] != full.history[1]["total"]
    meta = json.loads((tmp_path / "part" / "osasis.json").read_text())
    assert meta["iteration"] == 2 and meta["train"]["decode_steps"] == 4
    with pytest.raises(InputError, match="batch_size"):
        _trainer(tmp_path / "part", images, batch_size=3)[0].load_checkpoint(resumed.latest_checkpoint())


def test_saved_model_reproduces_sampling(tmp_path, images):
    tr, m = _trainer(tmp_path, images, iterations=1)
    tr.train(progress=False)
    m["diffae"].save_pretrained(tmp_path / "diffae")
    pipe = OSASISPipeline.from_run(tmp_path, diffae=tmp_path / "diffae")
    direct = OSASISPipeline(tr.unet_a, tr.unet_b, tr.spn, spn_time_input=tr.config.spn_time_input)
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    s = StylizeSettings(encode_steps=10, decode_steps=10)
    assert torch.equal(pipe.stylize(photo, images[0], s), direct.stylize(photo, images[0], s))
    assert pipe.spn_time_input == tr.config.spn_time_input == "grid_index"  # the released recipe by default


def test_gradient_checkpointing_gives_the_same_update(tmp_path, images):
    plain, _ = _trainer(tmp_path / "a", images, iterations=1)
    first = plain.train_iteration()  # (each trainer seeds the global RNG, which dropout draws from, when built)
    ckpt, _ = _trainer(tmp_path / "b", images, iterations=1, gradient_checkpointing=True)
    assert ckpt.train_iteration() == pytest.approx(first, rel=1e-5)
    for x, y in zip(plain.unet_b.parameters(), ckpt.unet_b.parameters()):
        assert torch.allclose(x, y, atol=1e-6)


def test_config_validation():
    with pytest.raises(InputError):
        TrainConfig(spn="big")
    with pytest.raises(InputError):
        TrainConfig(plan="consistent", encode_steps=100, decode_steps=30)
    assert make_spn("none", False) is None
    with pytest.raises(InputError):
        TrainConfig(autocast="int8")
