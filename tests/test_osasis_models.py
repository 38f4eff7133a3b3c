"""OSASIS networks: published layouts and parameter counts, official-file loading, code mixing, SPN (spec §9)."""

import collections

import pytest
import torch

from styleforge.errors import ModelNotFoundError
from styleforge.osasis.models import (ADMUNet, DiffAEAutoencoder, LatentDDIMNet, PlainSPN, ResBlock,
                                      StructurePreservingNetwork, count_parameters, load_model)
from styleforge.osasis.tiny import TINY_DIFFAE, TINY_LATENT, TINY_SPN, reinit_zero_layers, tiny_models


@pytest.fixture(scope="module")
def full():
    with torch.device("meta"):  # shapes only: the published architectures at no memory cost
        return {"diffae": DiffAEAutoencoder(), "latent": LatentDDIMNet(), "adm": ADMUNet(),
                "spn": StructurePreservingNetwork(), "plain": PlainSPN()}


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


def test_parameter_counts_match_the_published_configs(full):
    enc = count_parameters(full["diffae"].encoder)
    assert count_parameters(full["diffae"]) - enc == 138_341_891  # spec §2: UNet 138.34 M
    assert enc == 30_150_400  # encoder 30.15 M
    assert count_parameters(full["latent"]) == 54_109_696  # MLPSkipNet 54.11 M
    assert count_parameters(full["adm"]) == 93_563_910  # P2 ADM 93.56 M
    assert count_parameters(full["spn"]) == 873_347 and count_parameters(full["plain"]) == 67_843


# Key -> shape, written from the published architectures (DiffAE BeatGANsAutoencModel FFHQ-256, MLPSkipNet,
# guided-diffusion UNetModel for P2, OSASIS MappingNetTime) - not read from this code.
OFFICIAL_DIFFAE = {
    "time_embed.time_embed.0.weight": (512, 128), "time_embed.time_embed.2.weight": (512, 512),
    "input_blocks.0.0.weight": (128, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (128,), "input_blocks.1.0.in_layers.2.weight": (128, 128, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (256, 512), "input_blocks.1.0.cond_emb_layers.1.weight": (128, 512),
    "input_blocks.1.0.out_layers.0.weight": (128,), "input_blocks.1.0.out_layers.3.weight": (128, 128, 3, 3),
    "input_blocks.3.0.in_layers.2.weight": (128, 128, 3, 3),  # down-sampling res-block into 128x128
    "input_blocks.7.0.skip_connection.weight": (256, 128, 1, 1),
    "input_blocks.13.1.norm.weight": (512,), "input_blocks.13.1.qkv.weight": (1536, 512, 1),
    "input_blocks.13.1.proj_out.weight": (512, 512, 1),  # attention at 16x16
    "input_blocks.17.0.out_layers.3.weight": (512, 512, 3, 3),
    "middle_block.0.emb_layers.1.weight": (1024, 512), "middle_block.1.qkv.weight": (1536, 512, 1),
    "middle_block.2.cond_emb_layers.1.weight": (512, 512),
    "output_blocks.0.0.in_layers.0.weight": (1024,), "output_blocks.0.0.skip_connection.weight": (512, 1024, 1, 1),
    "output_blocks.2.1.in_layers.2.weight": (512, 512, 3, 3),  # up-sampling res-block leaving 8x8
    "output_blocks.5.1.qkv.weight": (1536, 512, 1), "output_blocks.5.2.emb_layers.1.weight": (1024, 512),
    "output_blocks.17.0.in_layers.2.weight": (128, 256, 3, 3),
    "out.0.weight": (128,), "out.2.weight": (3, 128, 3, 3),
    "encoder.input_blocks.0.0.weight": (128, 3, 3, 3), "encoder.input_blocks.1.0.in_layers.2.weight": (128, 128, 3, 3),
    "encoder.input_blocks.20.0.in_layers.2.weight": (512, 512, 3, 3), "encoder.middle_block.1.qkv.weight": (1536, 512, 1),
    "encoder.out.0.weight": (512,), "encoder.out.3.weight": (512, 512, 1, 1),
}
OFFICIAL_LATENT = {
    "time_embed.0.weight": (512, 64), "time_embed.2.weight": (512, 512),
    "layers.0.linear.weight": (2048, 512), "layers.0.linear_emb.weight": (2048, 512),
    "layers.0.cond_layers.1.weight": (2048, 512), "layers.0.norm.weight": (2048,),
    "layers.1.linear.weight": (2048, 2560), "layers.8.linear_emb.bias": (2048,), "layers.9.linear.weight": (512, 2560),
    "conds_mean": (1, 512), "conds_std": (1, 512),
}
OFFICIAL_ADM = {
    "time_embed.0.weight": (512, 128), "input_blocks.0.0.weight": (128, 3, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (256, 512), "input_blocks.2.0.in_layers.2.weight": (128, 128, 3, 3),
    "input_blocks.9.1.qkv.weight": (1536, 512, 1), "input_blocks.11.0.out_layers.3.weight": (512, 512, 3, 3),
    "middle_block.1.proj_out.weight": (512, 512, 1), "output_blocks.0.0.in_layers.0.weight": (1024,),
    "output_blocks.1.1.in_layers.2.weight": (512, 512, 3, 3), "output_blocks.3.1.qkv.weight": (1536, 512, 1),
    "output_blocks.3.2.in_layers.2.weight": (512, 512, 3, 3), "out.2.weight": (6, 128, 3, 3),
}
OFFICIAL_SPN = {
    "in_layer.0.weight": (128, 3, 1, 1), "block1.pre_layer.0.weight": (128,), "block1.pre_layer.2.weight": (256, 128, 1, 1),
    "block1.pre_layer.3.weight": (256,), "block1.post_layer.1.weight": (256, 256, 1, 1), "block1.emb_layer.1.weight": (512, 512),
    "block2.pre_layer.2.weight": (128, 256, 1, 1), "block2.emb_layer.1.weight": (256, 512), "out_layer.0.weight": (3, 128, 1, 1),
    "time_embed.0.weight": (512, 128), "time_embed.2.weight": (512, 512),
}


@pytest.mark.parametrize("name,layout", [("diffae", OFFICIAL_DIFFAE), ("latent", OFFICIAL_LATENT), ("adm", OFFICIAL_ADM),
                                         ("spn", OFFICIAL_SPN)])
def test_official_key_names_and_shapes(full, name, layout):
    sd = full[name].state_dict()
    wrong = {k: (tuple(sd[k].shape) if k in sd else None) for k, shape in layout.items() if k not in sd or tuple(sd[k].shape) != shape}
    assert not wrong


def test_layout_details(full):
    sd = full["diffae"].state_dict()
    assert not any(".out_layers." in k or ".emb_layers." in k for k in sd if k.startswith("encoder."))  # encoder blocks: GN-SiLU-conv only
    assert "layers.9.norm.weight" not in full["latent"].state_dict() and "layers.9.linear_emb.weight" not in full["latent"].state_dict()
    assert len(full["diffae"].input_blocks) == 18 and len(full["diffae"].output_blocks) == 18
    assert len(full["diffae"].encoder.input_blocks) == 21


def _official_ckpt(tiny, tmp_path):
    """A Lightning-style DiffAE checkpoint (model, ema_model with a latent_net, buffers), as released."""
    ae, latent = tiny["diffae"], tiny["latent"]
    sd = {}
    for root in ("model.", "ema_model."):
        sd.update({root + k: v.clone() for k, v in ae.state_dict().items()})
        sd.update({root + "latent_net." + k: v.clone() for k, v in latent.state_dict().items() if not k.startswith("conds_")})
    sd["x_T"] = torch.randn(2, 3, 32, 32)
    sd["conds_mean"], sd["conds_std"] = latent.conds_mean.clone(), latent.conds_std.clone()
    sd["model.time_embed.time_embed.0.bias"] = sd["model.time_embed.time_embed.0.bias"] + 1  # non-EMA differs
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, path)
    return path


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_official_lightning_checkpoints_load(tiny, tmp_path):
    path = _official_ckpt(tiny, tmp_path)
    ae = load_model(DiffAEAutoencoder, path, config=TINY_DIFFAE)
    assert _same(ae, tiny["diffae"])
    raw = load_model(DiffAEAutoencoder, path, config=TINY_DIFFAE, use_ema=False)
    assert not torch.equal(raw.time_embed.time_embed[0].bias, ae.time_embed.time_embed[0].bias)
    lat = load_model(LatentDDIMNet, path, config=TINY_LATENT)
    assert _same(lat, tiny["latent"])
    # statistics from a separate latent.pkl override the checkpoint's
    pkl = tmp_path / "latent.pkl"
    torch.save({"conds": torch.randn(5, 16), "conds_mean": torch.zeros(16), "conds_std": torch.full((16,), 2.0)}, pkl)
    lat2 = load_model(LatentDDIMNet, path, config=TINY_LATENT, latent_stats=pkl)
    assert torch.equal(lat2.conds_std, torch.full((1, 16), 2.0))


def test_official_osasis_checkpoint_and_toolkit_folder(tiny, tmp_path):
    ae, spn = tiny["diffae"], StructurePreservingNetwork(**TINY_SPN)
    full_b = {**ae.state_dict(), **{"latent_net." + k: v for k, v in tiny["latent"].state_dict().items() if not k.startswith("conds_")}}
    path = tmp_path / "iter_200.pt"
    torch.save({"iter": 200, "diffae_B": full_b, "model_map": spn.state_dict(), "optim_map": {}}, path)
    unet_b = load_model(DiffAEAutoencoder, path, config={**TINY_DIFFAE, "semantic_encoder": False})
    assert unet_b.encoder is None and torch.equal(unet_b.out[2].weight, ae.out[2].weight)
    assert _same(load_model(StructurePreservingNetwork, path, config=TINY_SPN), spn)
    ae.save_pretrained(tmp_path / "folder")
    assert _same(load_model(DiffAEAutoencoder, tmp_path / "folder"), ae)
    tiny["latent"].save_pretrained(tmp_path / "latent")  # the linear_emb / cond_layers.1 alias is stored once
    assert _same(load_model(LatentDDIMNet, tmp_path / "latent"), tiny["latent"])


def test_unknown_missing_and_misshaped_keys_are_named(tiny, tmp_path):
    sd = dict(tiny["diffae"].state_dict())
    sd["bogus.weight"] = torch.zeros(1)
    del sd["out.2.bias"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ModelNotFoundError, match=r"unknown keys: bogus\.weight.*missing keys: out\.2\.bias"):
        load_model(DiffAEAutoencoder, tmp_path / "bad.pt", config=TINY_DIFFAE)
    sd = dict(tiny["diffae"].state_dict())
    sd["out.2.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ModelNotFoundError, match=r"out\.2\.bias \(5,\) vs \(3,\)"):
        load_model(DiffAEAutoencoder, tmp_path / "shape.pt", config=TINY_DIFFAE)
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(DiffAEAutoencoder, tmp_path / "nothing.ckpt")


# ------------------------------------------------------------------------------------------------ mixing


def test_mixing_rule_counts_full_config(full):
    ae = full["diffae"]
    styled = ae.styled_levels_for(32)
    assert styled == {0, 1, 2, 3}
    counts = collections.Counter((k.split(".")[0], v) for k, v in ae.code_assignment(styled).items())
    assert counts == {("input_blocks", "style"): 11, ("input_blocks", "content"): 6, ("middle_block", "content"): 2,
                      ("output_blocks", "style"): 15, ("output_blocks", "content"): 8}
    assign = ae.code_assignment(styled)
    assert assign["input_blocks.12.0"] == "content"  # the down-sampling block entering 16x16 belongs to level 4
    assert assign["input_blocks.9.0"] == "style"  # ... and the one entering 32x32 to level 3
    assert assign["output_blocks.5.2"] == "content"  # up-sampling block leaving 16x16: level 4's group
    assert assign["output_blocks.8.1"] == "style"  # leaving 32x32: level 3's group


def _capture_codes(model):
    seen = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, ResBlock) and mod.takes_cond:
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, kw, name=name: seen.__setitem__(name, kw["cond"]), with_kwargs=True))
    return seen, hooks


def test_forward_routes_each_block_the_assigned_code(tiny):
    ae = tiny["diffae"]
    assert ae.styled_levels_for(16) == {0, 1}
    x, z_in, z_st = torch.randn(2, 3, 32, 32), torch.randn(2, 16), torch.randn(2, 16)
    seen, hooks = _capture_codes(ae)
    with torch.no_grad():
        ae(x, 300, z_in, style_cond=z_st, styled_levels=ae.styled_levels_for(16))
    for h in hooks:
        h.remove()
    expected = ae.code_assignment({0, 1})
    assert set(seen) == set(expected)
    for name, code in seen.items():
        assert code is (z_st if expected[name] == "style" else z_in), name
    # the mirror rule: a level's encoder blocks and decoder group get the same code
    by_level = collections.defaultdict(set)
    for (blocks, levels) in ((ae.input_blocks, ae.input_levels), (ae.output_blocks, ae.output_levels)):
        for k, lvl in enumerate(levels):
            part = "input_blocks" if blocks is ae.input_blocks else "output_blocks"
            by_level[lvl] |= {expected[n] for n in expected if n.startswith(f"{part}.{k}.")}
    assert all(len(v) == 1 for v in by_level.values())


def test_identical_codes_and_empty_set_equal_single_code(tiny):
    ae = tiny["diffae"]
    x, z, z2 = torch.randn(2, 3, 32, 32), torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        plain = ae(x, 400, z)
        for s in ({0}, {0, 1}, {0, 1, 2, 3}):
            assert torch.allclose(ae(x, 400, z, style_cond=z.clone(), styled_levels=s), plain, atol=1e-6)
        assert torch.equal(ae(x, 400, z, style_cond=z2, styled_levels=()), plain)
        mixed = ae(x, 400, z, style_cond=z2, styled_levels={0, 1})
        assert not torch.allclose(mixed, plain, atol=1e-4)
        everywhere = ae(x, 400, z, style_cond=z2, styled_levels={0, 1, 2, 3}, style_middle=True)
        assert torch.allclose(everywhere, ae(x, 400, z2), atol=1e-6)
        official_rule = ae(x, 400, z, style_cond=z2, styled_levels={0, 1, 2, 3})
        assert not torch.allclose(official_rule, ae(x, 400, z2), atol=1e-5)  # middle block keeps the content code
    zs = z2.clone().requires_grad_(True)
    ae(x, 400, z, style_cond=zs, styled_levels=()).sum().backward()
    assert zs.grad is None or not zs.grad.any()


def test_broadcast_and_batch_independence(tiny):
    ae = tiny["diffae"]
    x, z, zs = torch.randn(3, 3, 32, 32), torch.randn(3, 16), torch.randn(1, 16)
    with torch.no_grad():
        a = ae(x, 200, z, style_cond=zs, styled_levels={0})
        b = ae(x, 200, z, style_cond=zs.repeat(3, 1), styled_levels={0})
        assert torch.equal(a, b)
        single = ae(x[1:2], 200, z[1:2], style_cond=zs, styled_levels={0})
        assert torch.allclose(a[1:2], single, atol=1e-5)


def test_resblock_conditioning_paths():
    torch.manual_seed(0)
    blk = reinit_zero_layers(ResBlock(8, 16, 0.0, 8, cond_channels=4, groups=4)).eval()
    x, e1, e2, c1, c2 = torch.randn(2, 8, 6, 6), torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        assert not torch.allclose(blk(x, e1, c1), blk(x, e1, c2))
        blk.cond_emb_layers[1].weight.zero_()
        blk.cond_emb_layers[1].bias.zero_()
        assert torch.equal(blk(x, e1, c1), blk(x, e1, c2))
        assert not torch.allclose(blk(x, e1, c1), blk(x, e2, c1))
        blk.emb_layers[1].weight.zero_()
        blk.emb_layers[1].bias.zero_()
        assert torch.equal(blk(x, e1, c1), blk(x, e2, c1))


def test_fresh_diffae_outputs_zero():
    torch.manual_seed(0)
    ae = DiffAEAutoencoder(**TINY_DIFFAE).eval()
    with torch.no_grad():
        assert not ae(torch.randn(1, 3, 32, 32), 10, torch.randn(1, 16)).any()


# ------------------------------------------------------------------------------------------------ SPN


def test_spn_shapes_equivariance_and_time():
    torch.manual_seed(0)
    spn = StructurePreservingNetwork(**TINY_SPN).eval()
    with torch.no_grad():
        for h, w in ((8, 8), (16, 16), (31, 17)):
            assert spn(torch.randn(2, 3, h, w), 3).shape == (2, 3, h, w)
        x = torch.randn(1, 3, 8, 8)
        perm = torch.randperm(64)
        out = spn(x, 5).flatten(2)
        out_p = spn(x.flatten(2)[..., perm].reshape(1, 3, 8, 8), 5).flatten(2)
        assert torch.allclose(out[..., perm], out_p, atol=1e-5)
        assert not torch.allclose(spn(x, 1), spn(x, 7))
        for blk in (spn.block1, spn.block2):
            blk.emb_layer[1].weight.zero_()
            blk.emb_layer[1].bias.zero_()
        assert torch.equal(spn(x, 1), spn(x, 7))
    assert StructurePreservingNetwork(zero_init_output=True, **TINY_SPN)(x, 1).abs().max() == 0
