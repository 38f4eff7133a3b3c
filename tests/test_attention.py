import pytest
import torch

from styleforge.diffusion.attention import (AttentionController, AttentionRecorder, LayerSelector, attention_layers,
                                            attention_probs, explicit_attention, finest_factors)
from styleforge.diffusion.prompts import Conditioning


def _inputs(family, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    if family == "sd1":
        cond = Conditioning(torch.randn(batch, 77, 32, generator=g))
    else:
        cond = Conditioning(torch.randn(batch, 77, 64, generator=g), torch.randn(batch, 32, generator=g),
                            torch.tensor([[32.0, 32, 0, 0, 32, 32]]).repeat(batch, 1))
    return x, cond


def _eps(unet, x, cond, t=500):
    with torch.no_grad():
        return unet(x, t, **cond.unet_kwargs()).sample


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controller_without_hooks_equals_stock_unet(family, sd1_components, sdxl_components):
    unet = (sd1_components if family == "sd1" else sdxl_components)["unet"]
    x, cond = _inputs(family)
    stock = _eps(unet, x, cond)
    with AttentionController(unet) as ctl:
        controlled = _eps(unet, x, cond)
        ctl.add(AttentionRecorder(store_maps=False))  # a read-only hook changes nothing either
        observed = _eps(unet, x, cond)
    assert torch.allclose(controlled, stock, atol=1e-5)
    assert torch.allclose(observed, stock, atol=1e-5)
    assert torch.equal(_eps(unet, x, cond), stock)  # uninstall restores the original processors


def test_layer_roles_and_relative_resolution(sd1_components, sdxl_components):
    sd1 = attention_layers(sd1_components["unet"])
    up_self = {(l.name, l.factor) for l in sd1 if l.place == "up" and l.kind == "self"}
    assert up_self == {
        ("up_blocks.1.attentions.0.transformer_blocks.0.attn1", 2),
        ("up_blocks.1.attentions.1.transformer_blocks.0.attn1", 2),
        ("up_blocks.2.attentions.0.transformer_blocks.0.attn1", 1),
        ("up_blocks.2.attentions.1.transformer_blocks.0.attn1", 1),
    }
    assert all(l.kind == ("self" if l.name.endswith("attn1") else "cross") for l in sd1)
    assert finest_factors(sd1, "up", "self", 2) == (1, 2)
    sdxl = attention_layers(sdxl_components["unet"])
    assert finest_factors(sdxl, "up", "self", 2) == (2, 4)  # SDXL has no attention at the latent's own grid
    assert {l.place for l in sdxl} == {"down", "mid", "up"}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_recorder_shows_what_a_selector_picks_and_token_counts_match(family, sd1_components, sdxl_components):
    unet = (sd1_components if family == "sd1" else sdxl_components)["unet"]
    x, cond = _inputs(family, batch=1)
    with AttentionController(unet) as ctl:
        factors = finest_factors(ctl.layers, "up", "self", 2)
        selector = LayerSelector(places=("up",), kinds=("self",), factors=factors)
        rec = ctl.add(AttentionRecorder(selector=selector, store_maps=True))
        _eps(unet, x, cond)
    expected = [l.name for l in ctl.select(selector)]
    assert rec.layer_names == expected and expected
    for l in ctl.select(selector):
        n = (16 // l.factor) ** 2  # the selected layer really runs at latent / factor
        assert rec.maps[l.name].shape == (1, n, n)
    assert not any("attn2" in n or "down" in n or "mid" in n for n in rec.layer_names)


def test_a_hook_that_swaps_keys_changes_only_its_rows(sd1_components):
    unet = sd1_components["unet"]
    x, cond = _inputs("sd1", batch=2)
    stock = _eps(unet, x, cond)

    class SwapRow0FromRow1:
        selector = LayerSelector(places=("up",), kinds=("self",), factors=(1,))

        def __call__(self, call):
            k, v = call.key.clone(), call.value.clone()
            k[0], v[0] = call.key[1], call.value[1]
            call.key, call.value = k, v

    with AttentionController(unet) as ctl:
        ctl.add(SwapRow0FromRow1())
        edited = _eps(unet, x, cond)
    assert torch.allclose(edited[1], stock[1], atol=1e-6)
    assert not torch.allclose(edited[0], stock[0], atol=1e-3)


def test_explicit_attention_matches_sdpa_and_chunks_exactly():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8, generator=g) for _ in range(3))
    scale = 8 ** -0.5
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(explicit_attention(q, k, v, scale), ref, atol=1e-5)
    sharpen = lambda p: (p * 1.67 + (1 - 1.67) / p.shape[-1]).clamp(0, 1)  # noqa: E731 a row-wise map edit
    full = explicit_attention(q, k, v, scale, probs_fn=sharpen)
    for chunk in (1, 7, 20):
        assert torch.allclose(explicit_attention(q, k, v, scale, probs_fn=sharpen, chunk_size=chunk), full, atol=1e-6)
    assert torch.allclose(attention_probs(q, k, scale).sum(-1), torch.ones(2, 3, 20), atol=1e-5)


def test_a_hook_can_replace_the_attention_map(sd1_components):
    """A uniform map makes every query return the mean of the values; an identity edit changes nothing."""
    unet = sd1_components["unet"]
    name = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
    attn = dict(unet.named_modules())[name]
    hs = torch.randn(1, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))

    class Edit:
        selector = LayerSelector(places=("up",), kinds=("self",), factors=(1,))

        def __init__(self, fn):
            self.fn = fn

        def __call__(self, call):
            call.edit_probs(self.fn)

    with torch.no_grad():
        stock = attn(hs)
        with AttentionController(unet) as ctl:
            ctl.add(Edit(lambda p: p))
            same = attn(hs)
            ctl.hooks.clear()
            ctl.add(Edit(lambda p: torch.full_like(p, 1.0 / p.shape[-1])))
            uniform = attn(hs)
        v = attn.to_v(hs)
        expected = attn.to_out[0](v.mean(dim=1, keepdim=True).expand_as(v))
    assert torch.allclose(same, stock, atol=1e-5)
    assert torch.allclose(uniform, expected, atol=1e-5)
