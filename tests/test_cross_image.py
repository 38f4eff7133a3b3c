import warnings

import numpy as np
import pytest
import torch

from styleforge.cross_image import CrossImageAttentionPipeline
from styleforge.cross_image.attention import contrast_attention
from styleforge.cross_image.schedule import TransferSchedule
from styleforge.cross_image.segmentation import foreground_clusters, kmeans, self_segment
from styleforge.diffusion.attention import AttentionRecorder, LayerSelector, explicit_attention

K, S = 10, 2
# windows scaled down to 8 iterations: swaps from counter 1, injection every 3 below 6, AdaIN from 3
FAST = dict(num_inference_steps=K, skip_steps=S, swap_range_full=(1, 9), swap_range_half=(1, 7), adain_range=(3, 10),
            structure_injection_period=3, structure_injection_limit=6)


def _img(seed, size=32):
    return (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pipe():
    from styleforge.testing import tiny_components

    p = CrossImageAttentionPipeline(**tiny_components("sd1"))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def inversions(pipe):
    out = pipe(_img(0), _img(1), "animal", output_type="latent", adain="off", **FAST)
    return out.inversions


def _run(pipe, inversions, **kw):
    args = dict(FAST, structure_inversion=inversions["structure"], appearance_inversion=inversions["appearance"],
                output_type="latent")
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tiny nets segment nothing: the (tested) fallback warns
        return pipe(_img(0), _img(1), "animal", **args)


# ---------------------------------------------------------------------------------- attention-level (§9.1)


def _softmax_rows(n_q=6, n_k=6, seed=0):
    return torch.randn(2, 3, n_q, n_k, generator=torch.Generator().manual_seed(seed)).mul(3).softmax(-1)


def test_contrast_identity_closed_form_mass_and_order():
    a = _softmax_rows()
    assert torch.equal(contrast_attention(a, 1.0), a)
    beta, n = 1.67, a.shape[-1]
    raw = contrast_attention(a, beta, clip=False)
    assert torch.allclose(raw, beta * a + (1 - beta) / n, atol=1e-6)
    assert torch.allclose(raw.sum(-1), torch.ones(2, 3, 6), atol=1e-5)
    nonsquare = _softmax_rows(4, 9)  # the row mean must be per row (keepdim), not broadcast across
    assert torch.allclose(contrast_attention(nonsquare, beta, clip=False), beta * nonsquare + (1 - beta) / 9, atol=1e-6)
    clipped = contrast_attention(a, beta)
    assert clipped.min() >= 0 and clipped.max() <= 1 and (clipped.sum(-1) >= 1 - 1e-6).all()
    assert (clipped[a < (1 - 1 / beta) / n] == 0).all()
    order = a.argsort(-1)
    sorted_after = clipped.gather(-1, order)
    assert (sorted_after[..., 1:] >= sorted_after[..., :-1] - 1e-7).all()


def test_key_permutation_invariance_and_constant_values():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    f = lambda p: contrast_attention(p, 1.67)  # noqa: E731
    perm = torch.randperm(8, generator=g)
    out = explicit_attention(q, k, v, 0.5, probs_fn=f)
    assert torch.allclose(explicit_attention(q, k[:, :, perm], v[:, :, perm], 0.5, probs_fn=f), out, atol=1e-6)
    const = torch.randn(1, 2, 1, 4, generator=g).expand(1, 2, 8, 4)
    plain = explicit_attention(q, k, const, 0.5)
    assert torch.allclose(plain, const, atol=1e-6)  # beta = 1: the output is v itself
    probs = f(torch.matmul(q, k.transpose(-1, -2)).mul(0.5).softmax(-1))
    sharp = explicit_attention(q, k, const, 0.5, probs_fn=f)
    assert torch.allclose(sharp, probs.sum(-1, keepdim=True) * const, atol=1e-5)  # no renormalisation


# ---------------------------------------------------------------------------------- schedule (§9.4.6-7)


def _official(lag=1):
    return TransferSchedule(68, {1: (10, 90), 2: (10, 70)}, step_index_lag=lag)


def test_guidance_schedule_values():
    alphas = _official().guidance_scales()
    assert alphas[0] == 3.5 and alphas[-1] == 1.75
    assert torch.allclose(alphas.diff(), torch.full((67,), (1.75 - 3.5) / 67, dtype=torch.float64))
    assert abs(alphas[10] - 3.239) < 1e-3 and abs(alphas[20] - 2.978) < 1e-3
    assert torch.equal(TransferSchedule(68, {}, guidance_schedule="constant").guidance_scales(), torch.full((68,), 3.5, dtype=torch.float64))


def test_official_activity_log_at_100_steps_skip_32(pipe):
    from styleforge.diffusion.sampling import timesteps_for
    from styleforge.testing import sd_scheduler

    s = _official()
    log = [s.activity(i) for i in range(68)]
    assert [i for i, a in enumerate(log) if a["swap"]] == list(range(11, 68))
    assert all(log[i]["swap"] == (1, 2) for i in range(11, 68))  # both windows reach past the end
    assert [i for i, a in enumerate(log) if a["swap"] and a["inject"]] == [11, 16, 21, 26, 31, 36]
    assert [i for i, a in enumerate(log) if a["capture"]] == [20]
    assert [i for i, a in enumerate(log) if a["adain"]] == list(range(20, 68))
    assert [i for i, a in enumerate(log) if a["guidance"] is not None] == list(range(10, 68))
    ts = timesteps_for(sd_scheduler(), 100)[32:]
    assert [int(t) for t in ts] == [671 - 10 * i for i in range(68)]
    paper = [_official(lag=0).activity(i) for i in range(68)]
    assert [i for i, a in enumerate(paper) if a["swap"]] == list(range(10, 68))
    assert [i for i, a in enumerate(paper) if a["swap"] and a["inject"]] == [10, 15, 20, 25, 30, 35]
    assert [i for i, a in enumerate(paper) if a["capture"]] == [19]
    assert [i for i, a in enumerate(paper) if a["adain"]] == list(range(19, 68))


def test_pipeline_follows_the_schedule(pipe, inversions):
    out = _run(pipe, inversions, return_activity=True)
    s = TransferSchedule(K - S, {1: (1, 9), 2: (1, 7)}, guidance_range=(1, 9), adain_range=(3, 10),
                         injection_period=3, injection_limit=6)
    for i, a in enumerate(out.activity):
        assert a["swap"] == s.swap_factors(i) and a["adain"] == s.adain(i) and a["capture"] == s.capture(i)
    assert [a["t"] for a in out.activity] == [701 - 100 * i for i in range(K - S)]


# ---------------------------------------------------------------------------------- whole pipeline (§9.4)


def test_everything_off_gives_the_structure_path(pipe, inversions):
    out = _run(pipe, inversions, swap_range_full=(0, 0), swap_range_half=(0, 0), adain="off", swap_guidance_scale=1.0)
    assert torch.allclose(out.images[0], out.structure_reconstructions[0], atol=1e-6)


def test_identical_inputs_with_contrast_one_reconstruct(pipe, inversions):
    same = dict(structure_inversion=inversions["structure"], appearance_inversion=inversions["structure"])
    out = _run(pipe, inversions, contrast_strength=1.0, adain="full", **same)
    assert torch.allclose(out.images[0], out.appearance_reconstructions[0], atol=1e-5)
    assert torch.allclose(out.images[0], out.structure_reconstructions[0], atol=1e-5)
    sharp = _run(pipe, inversions, contrast_strength=1.67, adain="full", **same)
    assert not torch.allclose(sharp.images[0], sharp.structure_reconstructions[0], atol=1e-3)  # the contrast is live


def test_app_and_struct_rows_ignore_the_output_settings(pipe, inversions):
    a = _run(pipe, inversions)
    b = _run(pipe, inversions, contrast_strength=3.0, swap_guidance_scale=6.0, adain="full", structure_injection=False,
             swap_range_full=(2, 5))
    assert torch.equal(a.appearance_reconstructions[0], b.appearance_reconstructions[0]) and torch.equal(a.structure_reconstructions[0], b.structure_reconstructions[0])
    assert not torch.allclose(a.images[0], b.images[0], atol=1e-3)


def test_batch_independence_of_the_appearance_path(pipe, inversions):
    from styleforge.diffusion.sampling import edit_friendly_sample, noise_predictor

    out = _run(pipe, inversions)
    inv = inversions["appearance"]
    x, ts, zs = inv.start(S)
    from styleforge.diffusion.freeu import apply_freeu

    handle = apply_freeu(pipe.unet, "cia_backbone")
    try:
        with torch.no_grad():
            alone = edit_friendly_sample(noise_predictor(pipe.unet, pipe.encode_prompt("A photo of a animal")), x[None],
                                         pipe.ddim_scheduler, ts, zs[:, None], K)
    finally:
        handle.disable()
    assert torch.allclose(alone[0], out.appearance_reconstructions[0], atol=1e-4)


def test_output_row_only_guidance_equals_the_naive_schedule_with_fewer_rows(pipe, inversions):
    fast = _run(pipe, inversions, guidance_rows="output")
    naive = _run(pipe, inversions, guidance_rows="all")
    assert torch.allclose(fast.images[0], naive.images[0], atol=1e-5)
    guided = sum(1 for i in range(K - S) if TransferSchedule(K - S, {1: (1, 9), 2: (1, 7)}, guidance_range=(1, 9)).activity(i)["swap"])
    plain = (K - S) - guided
    assert fast.unet_rows == 3 * plain + 4 * guided  # at most 4 rows per step
    assert naive.unet_rows == 3 * plain + 6 * guided


def test_chunked_attention_equals_unchunked(pipe, inversions):
    full = _run(pipe, inversions)
    for chunk in (1, 7):
        assert torch.allclose(_run(pipe, inversions, attention_chunk_size=chunk).images[0], full.images[0], atol=1e-5)


def test_guidance_algebra(pipe, inversions):
    """With alpha = 1 the guided step is the swap pass alone; alpha enters affinely."""
    one = _run(pipe, inversions, swap_guidance_scale=1.0)
    no_window = _run(pipe, inversions, swap_guidance_scale=3.5, guidance_range=(100, 100))
    assert torch.allclose(one.images[0], no_window.images[0], atol=1e-6)
    assert not torch.allclose(one.images[0], _run(pipe, inversions).images[0], atol=1e-4)


def test_only_decoder_self_attention_at_two_finest_resolutions_swaps(pipe, inversions):
    from styleforge.cross_image import attention as cia_attention

    logged = []
    original = cia_attention.CrossImageAttentionHook.__call__

    def spy(self, call):
        before = call.output
        original(self, call)
        if call.output is not before:
            logged.append(call.layer)

    cia_attention.CrossImageAttentionHook.__call__ = spy
    try:
        _run(pipe, inversions)
    finally:
        cia_attention.CrossImageAttentionHook.__call__ = original
    assert logged and all(l.place == "up" and l.kind == "self" and l.factor in (1, 2) for l in logged)
    assert {l.factor for l in logged} == {1, 2}


def test_structure_injection_is_a_no_op_when_app_equals_struct(pipe, inversions):
    same = dict(structure_inversion=inversions["structure"], appearance_inversion=inversions["structure"])
    on = _run(pipe, inversions, structure_injection=True, **same)
    off = _run(pipe, inversions, structure_injection=False, **same)
    assert torch.allclose(on.images[0], off.images[0], atol=1e-6)


def test_empty_self_segmentation_falls_back_to_full_adain_without_nan(pipe, inversions):
    args = dict(FAST, structure_inversion=inversions["structure"], appearance_inversion=inversions["appearance"],
                output_type="latent")
    with pytest.warns(UserWarning):
        out = pipe(_img(0), _img(1), "animal", **args)
    assert torch.isfinite(out.images[0]).all()


def test_user_masks_replace_self_segmentation(pipe, inversions):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    out = _run(pipe, inversions, structure_mask=mask, appearance_mask=mask)
    assert out.masks["structure"].shape == (1, 1, 16, 16) and out.masks["structure"].sum() == 64
    full = _run(pipe, inversions, adain="full")
    assert not torch.allclose(out.images[0], full.images[0], atol=1e-4)


def test_exact_reconstruction_mode(pipe):
    """Sampling with the inversion's own guidance reproduces both inputs (spec §4.4, §10.7)."""
    from styleforge.diffusion.freeu import apply_freeu
    from styleforge.diffusion.inversion import edit_friendly_invert
    from styleforge.diffusion.sampling import noise_predictor

    cond, uncond = pipe.encode_prompt("A photo of a animal"), pipe.encode_prompt("", negative=True)
    invs = {}
    handle = apply_freeu(pipe.unet, "cia_backbone")
    try:
        for role, seed in (("appearance", 1), ("structure", 0)):
            x0 = pipe.encode_images(pipe.preprocess(_img(seed)))
            invs[role] = edit_friendly_invert(noise_predictor(pipe.unet, cond, uncond=uncond, guidance_scale=3.5), x0,
                                              pipe.ddim_scheduler, K, generator=torch.Generator().manual_seed(seed),
                                              zero_last_noise=False)
    finally:
        handle.disable()
    out = _run(pipe, invs, exact_reconstruction=True)
    assert torch.allclose(out.appearance_reconstructions[0], invs["appearance"].x0, atol=1e-4)
    assert torch.allclose(out.structure_reconstructions[0], invs["structure"].x0, atol=1e-4)


def test_inversions_draw_from_one_seeded_generator_in_the_official_order(pipe, inversions):
    """One generator seeded with the seed (on the model's device: the CPU here), the appearance's K draws first, each
    inversion drawing one latent-shaped map per step, least noisy first (the official sample_xts_from_x0)."""
    from styleforge.diffusion.inversion import NOISE_DRAWS
    from styleforge.diffusion.sampling import alpha_bar

    g = torch.Generator().manual_seed(42)  # the default seed
    for role in ("appearance", "structure"):
        inv = inversions[role]
        draws = [torch.randn((1,) + tuple(inv.x0.shape), generator=g) for _ in range(K)]
        a = alpha_bar(pipe.ddim_scheduler, inv.timesteps[0])
        # the noisiest latent is the direct noising of x0 with that inversion's last draw
        assert torch.allclose(inv.latents[0], a.sqrt() * inv.x0 + (1 - a).sqrt() * draws[-1][0], atol=1e-6), role
        assert inv.extra["noise_draws"] == NOISE_DRAWS and inv.extra["rng_device"] == "cpu"


def test_determinism_and_output_order(pipe):
    run = lambda: pipe(_img(0), _img(1), "animal", adain="full", seed=3, **FAST)  # noqa: E731
    a, b = run(), run()
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert len(a.images) == len(a.appearance_reconstructions) == len(a.structure_reconstructions) == 1
    assert a.transfer is a.images[0] and a.appearance_reconstruction is a.appearance_reconstructions[0]


def test_sdxl_shaped_unet_swaps_at_its_finest_decoder_resolutions():
    from styleforge.testing import tiny_components

    p = CrossImageAttentionPipeline(**tiny_components("sdxl"))
    p.set_progress_bar_config(disable=True)
    out = p(_img(0), _img(1), "animal", adain="full", output_type="latent", return_activity=True, **FAST)
    assert torch.isfinite(out.images[0]).all()
    assert {f for a in out.activity for f in a["swap"]} == {2, 4}
    assert not torch.allclose(out.images[0], out.structure_reconstructions[0], atol=1e-4)


# ---------------------------------------------------------------------------------- segmentation (§9.6)


def test_segmentation_recovers_the_object_square():
    r = 16
    region = torch.zeros(r, r, dtype=torch.long)
    region[: r // 3] = 1  # sky
    region[r // 3:] = 2  # ground
    region[4:10, 4:10] = 0  # the object, aligned with the 2x coarser noun grid
    flat = region.flatten()
    g = torch.Generator().manual_seed(0)
    attn = (flat[:, None] == flat[None, :]).float() + 0.05 * torch.rand(r * r, r * r, generator=g)
    attn = attn / attn.sum(-1, keepdim=True)
    noun = (region == 0).float()[::2, ::2] + 0.01  # an 8x8 noun map, upsampled x2 inside
    mask = self_segment(attn, noun, num_segments=3, random_state=1)
    assert torch.equal(mask, (region == 0).float())
    again = self_segment(attn, noun, num_segments=3, random_state=1)
    assert torch.equal(mask, again)


def test_self_segmentation_clusters_exactly_as_the_official_global_seed_calls():
    """The official code: np.random.seed(1), then KMeans(5, n_init=10).fit(appearance), then .fit(structure)."""
    from sklearn.cluster import KMeans

    from styleforge.cross_image.segmentation import cluster_pair

    g = torch.Generator().manual_seed(3)
    self_maps = (4 * torch.rand(2, 64, 64, generator=g)).softmax(-1)  # two 8x8 images' attention rows
    np.random.seed(1)
    official = [KMeans(n_clusters=5, n_init=10).fit(self_maps[row].numpy()).labels_ for row in range(2)]
    ours = cluster_pair(self_maps, num_segments=5)
    for row in range(2):
        assert np.array_equal(ours[row].flatten().numpy(), official[row]), row
    # the structure fit continues the stream: a fresh seed-1 fit of it gives other labels (so the check above bites)
    fresh = KMeans(n_clusters=5, n_init=10, random_state=1).fit(self_maps[1].numpy()).labels_
    assert not np.array_equal(fresh, official[1])


def test_the_1_4_rule():
    assert foreground_clusters(dict(enumerate([0.9, 0.2, 0.25, 0.2, 0.22]))) == [0]
    assert foreground_clusters(dict(enumerate([0.9, 0.8, 0.2, 0.2, 0.2]))) == [0, 1]


def test_kmeans_with_fewer_distinct_points_than_clusters_gives_no_nan():
    pts = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    labels = kmeans(pts, 4, random_state=0)
    assert labels.shape == (10,)
    mask = self_segment(torch.eye(16)[[0] * 8 + [5] * 8], torch.ones(4, 4), num_segments=5,
                        random_state=0)
    assert torch.isfinite(mask).all()


def test_object_token_index(pipe):
    assert pipe.prompt_encoder.token_span("A photo of a animal", "animal") == [5]
