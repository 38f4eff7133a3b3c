"""OSASIS schedules, DDIM algebra, the SPN decode step, stage 0 and stage 2 (spec §9 items 1-11, 23-24, 36-41)."""

import math

import pytest
import torch

from styleforge.errors import InputError
from styleforge.osasis.core import encode_to_t0, sample_semantic_codes, spn_decode_step
from styleforge.osasis.losses import CLIPEmbedder
from styleforge.osasis.pipeline import EditSettings, OSASISPipeline, StylizeSettings
from styleforge.osasis.prepare import PrepareSettings, RespacedDDPM, photo_counterparts, prepare_style_photo, selection_scores
from styleforge.osasis.schedule import (CLEAN, NoiseSchedule, TimestepPlan, ddim_grid, ddim_run, ddim_transition,
                                        fractional_grid, q_sample)
from styleforge.osasis.tiny import CharTokenizer, StubPerceptual, tiny_clip, tiny_models
from styleforge.osasis.train import make_unet_b


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.linear()


def test_schedules_and_grids(sched):
    for t, v in ((500, 0.0777967), (480, 0.0948687), (450, 0.1258388), (510, 0.0702375)):
        assert abs(float(sched.alphas_cumprod[t]) - v) < 1e-6
    for n in (20, 50, 100, 200):
        g = ddim_grid(n)
        assert len(g) == n and g[0] == 0 and g[-1] == 1000 - 1000 // n and g[1] - g[0] == 1000 // n
        # respaced betas reproduce alpha-bar at the kept timesteps
        acp = sched.alphas_cumprod[g]
        respaced = 1 - acp / torch.cat([acp.new_ones(1), acp[:-1]])
        assert torch.allclose(torch.cumprod(1 - respaced, 0), acp, rtol=1e-12)
    f = fractional_grid(50)
    assert len(set(f)) == 50 and f[0] == 0 and f[-1] == 999 and f[25] == 510 and f[24] == 489
    lat = NoiseSchedule.constant()
    assert torch.allclose(lat.alphas_cumprod, 0.992 ** torch.arange(1, 1001, dtype=torch.float64))
    assert abs(float(lat.alphas_cumprod[999]) - 3.25e-4) < 1e-5
    assert torch.allclose(sched.to_diffusers().alphas_cumprod.double(), sched.alphas_cumprod, rtol=1e-4)


def test_official_and_consistent_plans():
    enc100 = TimestepPlan(0.5, 100, 50).encode_transitions()
    assert len(enc100) == 50 and enc100[0][1:] == (0, 10) and enc100[-1][2] == 500
    enc50 = TimestepPlan(0.5, 50, 20).encode_transitions()
    assert len(enc50) == 25 and enc50[-1][2] == 500
    dec = TimestepPlan(0.5, 100, 50).decode_transitions()
    assert len(dec) == 25 and dec[0] == (24, 480, 460) and dec[-1] == (0, 0, CLEAN)
    dec = TimestepPlan(0.5, 50, 20).decode_transitions()
    assert len(dec) == 10 and dec[0][:2] == (9, 450)
    cons = TimestepPlan(0.5, 50, 20, "consistent").decode_transitions()
    assert cons[0][:2] == (10, 500) and len(cons) == 11
    with pytest.raises(InputError, match="not on the"):
        TimestepPlan(0.5, 100, 30, "consistent").decode_transitions()
    with pytest.raises(InputError):
        TimestepPlan(kind="paper")


def test_x_independent_eps_round_trip_and_step_inverse(sched):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    fixed = torch.randn(2, 3, 8, 8)
    plan = TimestepPlan(0.5, 50, 50, "consistent")
    xt = ddim_run(lambda x, t: fixed, x0, sched, plan.encode_transitions(), clamp=False)
    # the encoder treats the image as the state at t = 0: decode back to that grid point (drop the final x0 step)
    back = ddim_run(lambda x, t: fixed, xt, sched, plan.decode_transitions()[:-1], clamp=False)
    assert (back - x0).abs().max() < 1e-5
    a, b = sched.alpha_bar(300), sched.alpha_bar(350)
    up, _ = ddim_transition(x0, fixed, a, b, clamp=False)
    down, _ = ddim_transition(up, fixed, b, a, clamp=False)
    assert (down - x0).abs().max() < 1e-6


def test_round_trip_error_shrinks_with_the_grid(tiny, sched):
    ae = tiny["diffae"]
    x0 = torch.rand(1, 3, 32, 32) * 1.6 - 0.8
    with torch.no_grad():
        z = ae.encode(x0)
        errs = []
        for n in (50, 200, 1000):
            plan = TimestepPlan(0.1, n, n, "consistent")  # t0 = 100
            xt = ddim_run(lambda x, t: ae(x, t, z), x0, sched, plan.encode_transitions(), clamp=False)
            rec = ddim_run(lambda x, t: ae(x, t, z), xt, sched, plan.decode_transitions(), clamp=False)
            errs.append(float((rec - x0).norm() / x0.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2


def test_decode_step_formula_clamp_and_rng(sched):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a, b = sched.alpha_bar(480), sched.alpha_bar(460)
    state = torch.get_rng_state()
    nxt, x0 = ddim_transition(x, eps, a, b, clamp=False)
    assert torch.equal(state, torch.get_rng_state())
    hand_x0 = (x - math.sqrt(1 - float(a)) * eps) / math.sqrt(float(a))
    assert torch.allclose(x0, hand_x0, atol=1e-6)
    assert torch.allclose(nxt, math.sqrt(float(b)) * hand_x0 + math.sqrt(1 - float(b)) * eps, atol=1e-6)
    last, x0_last = ddim_transition(x, eps, sched.alpha_bar(0), sched.alpha_bar(CLEAN), clamp=False)
    assert torch.equal(last, x0_last)
    c_next, c_x0 = ddim_transition(x, eps, a, b, clamp=True)
    assert c_x0.abs().max() <= 1
    small = x * 0.01
    e_small = (small - a.float().sqrt() * (small / 2)) / (1 - a.float()).sqrt()  # x0_hat = small / 2, inside [-1, 1]
    assert torch.allclose(ddim_transition(small, e_small, a, b, clamp=True)[0], ddim_transition(small, e_small, a, b, clamp=False)[0], atol=1e-6)


def test_q_sample_statistics(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((10_000,), 0.6)
    a = sched.alpha_bar(300)
    xt = q_sample(x0, a, torch.randn(10_000, generator=g))
    mean, std = math.sqrt(float(a)) * 0.6, math.sqrt(1 - float(a))
    assert abs(float(xt.mean()) - mean) < 3 * std / 100
    assert abs(float(xt.std()) - std) < 3 * std / math.sqrt(2 * 10_000) * 1.5


def test_latent_normalisation_and_sampling(tiny):
    lat = tiny["latent"]
    z = torch.randn(4, 16)
    assert torch.allclose(lat.denormalize(lat.normalize(z)), z, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_semantic_codes(lat, 2, steps=10, generator=g1)
    assert torch.equal(a, sample_semantic_codes(lat, 2, steps=10, generator=g2)) and a.shape == (2, 16)


# ------------------------------------------------------------------------------------------------ SPN step


def test_spn_step_shift_and_weight_zero(tiny, sched):
    ae, spn = tiny["diffae"], tiny["spn"]
    x, img, z = torch.randn(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 16)
    seen = {}
    h1 = spn.register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0]))
    h2 = ae.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        spn_decode_step(ae, spn, x, img, 5, 300, 250, sched, spn_weight=0.3, cond=z)
        assert seen["input"] is img  # the SPN sees the clean image, never x_t
        assert torch.allclose(seen["x"] - x, 0.3 * spn(img, 5), atol=1e-6)  # Eq. 12
        plain = ddim_transition(x, ae(x, 300, z), sched.alpha_bar(300), sched.alpha_bar(250))
        zero = spn_decode_step(ae, spn, x, img, 5, 300, 250, sched, spn_weight=0.0, cond=z)
        assert torch.equal(zero[0], plain[0]) and torch.equal(zero[1], plain[1])
    h1.remove()
    h2.remove()


# ------------------------------------------------------------------------------------------------ stage 2


def _pipe(tiny, **kw):
    return OSASISPipeline(tiny["diffae"], make_unet_b(tiny["diffae"]), tiny["spn"], **kw)


def test_untrained_stylization_is_a_diffae_round_trip(tiny, sched):
    pipe = _pipe(tiny)
    photo = torch.rand(1, 3, 32, 32) * 1.4 - 0.7
    s = StylizeSettings(t0_ratio=0.5, encode_steps=20, decode_steps=20, plan="consistent", spn_weight=0.0, clamp=False)
    out = pipe.stylize(photo, photo, s)  # z_style = z_in, lambda = 0, eps_B = eps_A
    ae = tiny["diffae"]
    with torch.no_grad():
        z = ae.encode(photo)
        plan = s.timestep_plan()
        xt = ddim_run(lambda x, t: ae(x, t, z), photo, sched, plan.encode_transitions(), clamp=False)
        ref = ddim_run(lambda x, t: ae(x, t, z), xt, sched, plan.decode_transitions(), clamp=False)
    assert torch.allclose(out, ref, atol=1e-5)


def test_stylize_shape_range_batching_and_spn_weight(tiny):
    pipe = _pipe(tiny)
    g = torch.Generator().manual_seed(1)
    photos, style = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    s = StylizeSettings(encode_steps=10, decode_steps=10, batch_size=2, spn_weight=0.5)
    out = pipe.stylize(photos, style, s)
    assert out.shape == (3, 3, 32, 32) and out.abs().max() <= 1
    single = pipe.stylize(photos[2:], style, s)
    assert torch.allclose(out[2:], single, atol=1e-5)
    s0 = StylizeSettings(encode_steps=10, decode_steps=10, spn_weight=0.0)
    assert not torch.allclose(pipe.stylize(photos[:1], style, s0), out[:1], atol=1e-4)
    imgs = pipe((photos[:1] + 1) / 2, style, s).images  # the public call takes images in [0, 1], as everywhere
    assert imgs[0].size == (32, 32)


def test_text_manipulation_lowers_the_loss_and_keeps_models_fixed(tiny):
    clip = CLIPEmbedder(tiny_clip(), CharTokenizer())
    pipe = _pipe(tiny, clip=clip, latent_net=tiny["latent"])
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    before = {k: v.clone() for k, v in pipe.unet_b.state_dict().items()}
    s = StylizeSettings(encode_steps=10, decode_steps=10, spn_weight=0.1)
    texts = clip.text(["face", "smiling face"])
    v_text = (texts[1] - texts[0])[None]

    def loss_of(codes):
        with torch.no_grad():
            z0 = pipe.semantic_codes(photo)
            xt = encode_to_t0(pipe.unet_a, photo, z0, s.timestep_plan(), pipe.schedule)
            x = pipe.decode(xt, photo, s.spn_weight, s.timestep_plan(), cond=codes)
            out = clip(x) - clip(photo)
            return float(1 - torch.nn.functional.cosine_similarity(out, v_text).mean())

    z0 = pipe.semantic_codes(photo)
    edited = pipe.edit_codes(photo, "face", "smiling face", s, EditSettings(iterations=4, lr=0.05))
    assert loss_of(edited) < loss_of(z0)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet_b.state_dict().items())
    out = pipe.stylize(photo, photo, s, content_codes=edited)
    assert out.shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ stage 0


def test_respaced_ddpm_matches_guided_diffusion(sched):
    d = RespacedDDPM(fractional_grid(50))
    i = 24
    acp, prev = sched.alphas_cumprod[489], sched.alphas_cumprod[469]
    beta = 1 - acp / prev
    assert torch.isclose(d.betas[i], beta)
    assert torch.isclose(d.posterior_variance[i], beta * (1 - prev) / (1 - acp))
    assert torch.isclose(d.coef_x0[i], beta * prev.sqrt() / (1 - acp))
    assert torch.isclose(d.posterior_log_variance_clipped[0], d.posterior_variance[1].log())


def test_stage0_selection_and_determinism(tiny):
    ddpm = tiny["ddpm"]
    style = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    s = PrepareSettings(num_candidates=3, steps=10, batch_size=2, seed=1)
    perceptual = StubPerceptual()
    best, cands, scores = prepare_style_photo(ddpm, style, perceptual, s)
    assert cands.shape == (3, 3, 32, 32) and cands.abs().max() <= 1
    hand = 10 * (cands - style).abs().flatten(1).mean(1) + perceptual(cands, style.expand_as(cands))
    assert torch.allclose(scores, hand, atol=1e-6) and torch.equal(best[0], cands[int(hand.argmin())])
    best2, cands2, _ = prepare_style_photo(ddpm, style, perceptual, s)
    assert torch.equal(cands, cands2)
    one, all1, _ = prepare_style_photo(ddpm, style, None, PrepareSettings(num_candidates=1, steps=10, lpips_weight=0))
    assert torch.equal(one, all1)
    assert not torch.allclose(cands[0], cands[1])
    with pytest.raises(InputError):
        selection_scores(cands, style, None, PrepareSettings())


def test_stage0_official_plan_starts_one_index_lower(tiny):
    calls = []
    ddpm = tiny["ddpm"]
    h = ddpm.register_forward_pre_hook(lambda m, a: calls.append(int(torch.as_tensor(a[1]).flatten()[0])))
    style = torch.zeros(1, 3, 32, 32)
    photo_counterparts(ddpm, style, PrepareSettings(num_candidates=1, steps=50))
    official = calls[:]
    calls.clear()
    photo_counterparts(ddpm, style, PrepareSettings(num_candidates=1, steps=50, plan="consistent"))
    h.remove()
    assert official[0] == 489 and len(official) == 25 and official[-1] == 0
    assert calls[0] == 510 and len(calls) == 26
