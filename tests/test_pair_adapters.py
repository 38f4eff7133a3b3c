"""PairCustomization adapters: construction invariants of spec §8.2 on the tiny SD 1.x and SDXL UNets."""

import copy
import re

import pytest
import torch

from styleforge.pair_customization.adapters import (CONTENT, STYLE, attach_pair_adapters, find_targets,
                                                    orthonormal_basis)


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    kwargs = {"encoder_hidden_states": emb}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g),
                                       "time_ids": torch.tensor([[32, 32, 0, 0, 32, 32]] * 2, dtype=torch.float32)}
    return x, torch.tensor([500, 20]), kwargs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_zero_up_projections_leave_the_model_unchanged(family, sd1_components, sdxl_components):
    unet = copy.deepcopy((sd1_components if family == "sd1" else sdxl_components)["unet"])
    x, t, kw = unet_inputs(unet)
    with torch.no_grad():
        before = unet(x, t, **kw).sample
        adapters = attach_pair_adapters(unet, content_rank=4, style_rank=4)
        outs = []
        for scales in ({}, {CONTENT: 1.0}, {STYLE: 1.0}, {CONTENT: 1.0, STYLE: 1.0}):
            with adapters.active(scales):
                outs.append(unet(x, t, **kw).sample)
    for out in outs:
        assert torch.equal(out, before)
    assert not any(n for n, _ in unet.named_parameters() if "lora" in n)  # the UNet's own modules are untouched


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_targets_shapes_and_parameter_counts(family, sd1_components, sdxl_components):
    unet = copy.deepcopy((sd1_components if family == "sd1" else sdxl_components)["unet"])
    adapters = attach_pair_adapters(unet, content_rank=4, style_rank=3)
    expected = {n for n, m in unet.named_modules() if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", n)}
    blocks = sum(1 for n, _ in unet.named_modules() if re.search(r"transformer_blocks\.\d+$", n))
    assert set(adapters.names) == expected and len(expected) == 8 * blocks
    trainable = sum(p.numel() for p in adapters.parameters() if p.requires_grad)
    frozen = sum(lora.down.numel() for layer in adapters.layers for lora in layer.lora.values())
    widths = {layer.in_features for layer in adapters.layers}
    assert sum(b.numel() for b in adapters.buffers()) == 7 * sum(widths)  # one stored A pair per width
    modules = dict(unet.named_modules())
    assert trainable == 7 * sum(modules[n].out_features for n in adapters.names)
    assert frozen == 7 * sum(modules[n].in_features for n in adapters.names)
    for name, layer in zip(adapters.names, adapters.layers):
        lin = modules[name]
        assert layer.lora[CONTENT].down.shape == (4, lin.in_features) and layer.lora[STYLE].down.shape == (3, lin.in_features)
        assert layer.lora[CONTENT].up.shape == (lin.out_features, 4) and layer.lora[STYLE].up.shape == (lin.out_features, 3)


def test_down_projections_orthonormal_shared_per_width_and_seeded(sd1_components):
    unet = copy.deepcopy(sd1_components["unet"])
    adapters = attach_pair_adapters(unet, content_rank=5, style_rank=6)
    by_width = {}
    for layer in adapters.layers:
        a_c, a_s = layer.lora[CONTENT].down.double(), layer.lora[STYLE].down.double()
        both = torch.cat([a_c, a_s])
        assert (both @ both.T - torch.eye(11, dtype=torch.float64)).abs().max() < 1e-5
        assert (a_c @ a_s.T).abs().max() < 1e-6
        seen = by_width.setdefault(layer.in_features, (a_c, a_s))
        assert torch.equal(seen[0], a_c) and torch.equal(seen[1], a_s)
        assert not isinstance(layer.lora[CONTENT].down, torch.nn.Parameter)  # a buffer: no optimizer can reach it
    assert set(by_width) == {32, 64}
    # the official draw: torch.manual_seed(seed); torch.randn(n, n); Q of its QR
    torch.manual_seed(123846)
    q_official = torch.linalg.qr(torch.randn(32, 32).double())[0].float()
    assert torch.allclose(by_width[32][0].float(), q_official[:5], atol=1e-6)
    state = torch.get_rng_state()
    assert torch.equal(orthonormal_basis(32), orthonormal_basis(32)) and not torch.equal(orthonormal_basis(32), orthonormal_basis(32, 1))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_rank_guard(sd1_components):
    with pytest.raises(ValueError, match="exceeds the smallest adapted input width 32"):
        attach_pair_adapters(copy.deepcopy(sd1_components["unet"]), content_rank=20, style_rank=13)


def test_layer_output_is_the_lora_formula_and_blind_to_the_other_subspace(sd1_components):
    unet = copy.deepcopy(sd1_components["unet"])
    adapters = attach_pair_adapters(unet, content_rank=4, style_rank=4, style_alpha=2.0)
    name = adapters.names[0]
    lin = dict(unet.named_modules())[name]
    layer = adapters.layers[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lora in layer.lora.values():
            lora.up.copy_(torch.randn(lora.up.shape, generator=g))
    x = torch.randn(3, lin.in_features, generator=g)
    a_s, b_s = layer.lora[STYLE].down, layer.lora[STYLE].up
    with torch.no_grad(), adapters.active({STYLE: 1.0}):
        got = lin(x)
    want = torch.nn.functional.linear(x, lin.weight, lin.bias) + (2.0 / 4) * (x @ a_s.T) @ b_s.T
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad(), adapters.active({STYLE: 0.5}):  # affine in the adapter multiplier
        half = lin(x)
    assert torch.allclose(half - lin(x), 0.5 * (got - lin(x)), atol=1e-5)
    v = torch.randn(3, 4, generator=g)
    in_content_space = v @ layer.lora[CONTENT].down  # x = A_c^T v
    with torch.no_grad():
        assert layer.lora[STYLE](in_content_space).abs().max() < 1e-5
        assert layer.lora[CONTENT](v @ layer.lora[STYLE].down).abs().max() < 1e-5
        assert layer.lora[CONTENT](in_content_space).abs().max() > 1e-2


def test_non_orthogonal_ablation_has_trainable_gaussian_downs(sd1_components):
    adapters = attach_pair_adapters(copy.deepcopy(sd1_components["unet"]), content_rank=8, style_rank=8, orthogonal=False)
    downs = [p for n, p in adapters.named_parameters() if n.endswith(".down")]
    assert len(downs) == 2 * len(adapters.names) and all(p.requires_grad for p in downs)
    a_c, a_s = adapters.layers[0].lora[CONTENT].down, adapters.layers[0].lora[STYLE].down
    assert (a_c @ a_s.T).abs().max() > 1e-3  # no orthogonality by construction
    assert 0.08 < float(torch.cat([p.detach().flatten() for p in downs]).std()) < 0.17  # std 1/r = 0.125


def test_active_state_is_restored_after_an_exception(sd1_components):
    unet = copy.deepcopy(sd1_components["unet"])
    adapters = attach_pair_adapters(unet, content_rank=2, style_rank=2)
    with pytest.raises(RuntimeError):
        with adapters.active({STYLE: 1.0}):
            raise RuntimeError("boom")
    assert adapters._state.scales == {}
    with pytest.raises(KeyError):
        with adapters.active({"nope": 1.0}):
            pass
    adapters.remove()
    assert find_targets(unet)  # the UNet itself is intact after removal
