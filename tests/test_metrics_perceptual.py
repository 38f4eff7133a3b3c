"""LPIPS, background LPIPS, Gram distance, DINO structure distance, identity similarity and DreamSim on
randomly initialised networks: identities, symmetries, invariances and masks (specs: cross_image_attention §9.7,
osasis §8 42-43, pix2pix_zerocon §7 G, pair_customization §8 38)."""

import json

import pytest
import torch
from torch import nn

from styleforge.metrics import dreamsim as ds
from styleforge.metrics.gram import gram_distance, gram_distance_from_features, gram_matrix
from styleforge.metrics.identity import face_crop, identity_similarity
from styleforge.metrics.images import short_side_resize
from styleforge.metrics.lpips import LPIPS, background_lpips, lpips_distance
from styleforge.metrics.nets.irse import IRSE50
from styleforge.metrics.nets.vgg import imagenet_normalize, vgg19
from styleforge.metrics.nets.vit import VisionTransformer
from styleforge.metrics.structure import cosine_self_similarity, key_self_similarity, structure_distance


def _imgs(n=2, h=64, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def lpips_alex():
    torch.manual_seed(0)
    return LPIPS.build("alex")


# ---- LPIPS


def test_lpips_identity_symmetry_and_sign(lpips_alex):
    a, b = _imgs(seed=1), _imgs(seed=2)
    assert torch.equal(lpips_distance(a, a, net=lpips_alex), torch.zeros(2))
    d_ab, d_ba = lpips_distance(a, b, net=lpips_alex), lpips_distance(b, a, net=lpips_alex)
    assert torch.allclose(d_ab, d_ba, atol=1e-6) and (d_ab > 0).all()


def test_lpips_spatial_map_has_the_input_size_and_is_zero_for_identical_images(lpips_alex):
    a, b = _imgs(1, 64, 48, seed=3), _imgs(1, 64, 48, seed=4)
    m = lpips_alex(a, b, spatial=True)
    assert m.shape == (1, 1, 64, 48) and (m >= 0).all()
    assert torch.equal(lpips_alex(a, a, spatial=True), torch.zeros_like(m))


def test_lpips_grows_with_the_size_of_a_perturbation(lpips_alex):
    a = _imgs(1, seed=5)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(6))
    small, large = lpips_distance(a, a + 0.05 * noise, net=lpips_alex), lpips_distance(a, a + 0.5 * noise, net=lpips_alex)
    assert 0 < float(small) < float(large)


class PointwiseBackbone(nn.Module):
    """1x1 convolutions only: every output pixel sees exactly one input pixel (no receptive-field leak)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU())

    def forward_taps(self, x, taps):
        out, feats = {}, x
        for i, layer in enumerate(self.features):
            feats = layer(feats)
            out[i] = feats
        return [out[t] for t in taps]


def test_background_lpips_ignores_changes_inside_the_mask():
    torch.manual_seed(0)
    pointwise = LPIPS(PointwiseBackbone(), taps=(1, 3), channels=(8, 8))
    a = _imgs(1, 32, 32, seed=7)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    edited_inside = torch.where(mask.bool(), _imgs(1, 32, 32, seed=8), a)
    edited_outside = torch.where(mask.bool(), a, _imgs(1, 32, 32, seed=8))
    assert float(background_lpips(a, edited_inside, mask, net=pointwise, mode="spatial")) == pytest.approx(0.0, abs=1e-7)
    assert float(background_lpips(a, edited_outside, mask, net=pointwise, mode="spatial")) > 0
    assert float(lpips_distance(a, edited_inside, net=pointwise)) > 0  # the whole-image distance does see it


def test_masked_background_lpips_is_exactly_blind_to_the_foreground(lpips_alex):
    a = _imgs(1, 64, 64, seed=9)
    mask = torch.zeros(64, 64)
    mask[16:48, 20:44] = 1
    edited = torch.where(mask.bool(), _imgs(1, 64, 64, seed=10), a)
    assert float(background_lpips(a, edited, mask, net=lpips_alex, mode="masked")) == 0.0
    assert float(background_lpips(a, edited, mask, net=lpips_alex, mode="spatial")) > 0  # receptive fields reach across


def test_background_lpips_of_an_all_foreground_mask_is_nan_with_a_warning(lpips_alex):
    a = _imgs(1, 32, 32, seed=11)
    with pytest.warns(UserWarning, match="no background"):
        value = background_lpips(a, a, torch.ones(32, 32), net=lpips_alex)
    assert torch.isnan(value).all()


# ---- Gram


def test_gram_matrix_is_normalised_by_c_h_w():
    f = torch.ones(1, 2, 3, 4)
    assert torch.allclose(gram_matrix(f), torch.full((1, 2, 2), 12 / (2 * 3 * 4)))


def test_gram_is_invariant_to_a_spatial_permutation_of_feature_positions():
    g = torch.Generator().manual_seed(12)
    feats = torch.randn(2, 16, 6, 7, generator=g)
    perm = torch.randperm(42, generator=g)
    shuffled = feats.flatten(2)[:, :, perm].reshape(2, 16, 6, 7)
    assert not torch.equal(feats, shuffled)
    assert torch.allclose(gram_matrix(feats), gram_matrix(shuffled), atol=1e-6)
    assert float(gram_distance_from_features([feats], [shuffled]).max()) < 1e-5


def test_gram_distance_sums_frobenius_norms_over_layers():
    g = torch.Generator().manual_seed(13)
    a = [torch.randn(1, 4, 5, 5, generator=g), torch.randn(1, 8, 3, 3, generator=g)]
    b = [torch.randn(1, 4, 5, 5, generator=g), torch.randn(1, 8, 3, 3, generator=g)]
    by_hand = sum(float(((gram_matrix(x) - gram_matrix(y)) ** 2).sum().sqrt()) for x, y in zip(a, b))
    assert float(gram_distance_from_features(a, b)) == pytest.approx(by_hand, rel=1e-5)


@pytest.fixture(scope="module")
def random_vgg19():
    torch.manual_seed(0)
    return vgg19().eval()


def test_gram_distance_with_a_random_vgg19_is_zero_on_identity_and_symmetric(random_vgg19):
    a, b = _imgs(2, 32, 32, seed=14), _imgs(2, 32, 32, seed=15)
    assert torch.equal(gram_distance(a, a, net=random_vgg19, size=None), torch.zeros(2))
    d1, d2 = gram_distance(a, b, net=random_vgg19, size=None), gram_distance(b, a, net=random_vgg19, size=None)
    assert torch.allclose(d1, d2) and (d1 > 0).all()


# ---- DINO structure distance


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(patch_size=8, embed_dim=32, depth=2, num_heads=4).eval()


def test_keys_are_what_a_hook_on_qkv_sees_reshaped_as_splice_does(tiny_vit):
    x = _imgs(1, 48, 40, seed=16)
    seen = {}
    handle = tiny_vit.blocks[1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    try:
        tiny_vit(x)
    finally:
        handle.remove()
    b, n, three_c = seen["qkv"].shape
    splice_keys = seen["qkv"].reshape(b, n, 3, 4, three_c // 12).permute(2, 0, 3, 1, 4)[1]
    assert torch.allclose(tiny_vit.block_keys(x, 1), splice_keys, atol=1e-6)
    assert n == 1 + (48 // 8) * (40 // 8)  # CLS + the patch grid of a non-square input


def test_self_similarity_is_symmetric_with_unit_diagonal(tiny_vit):
    s = key_self_similarity(tiny_vit, _imgs(1, 32, 32, seed=17), layer=1)
    assert torch.allclose(s, s.transpose(1, 2), atol=1e-6)
    assert torch.allclose(torch.diagonal(s, dim1=1, dim2=2), torch.ones(1, s.shape[1]), atol=1e-5)
    assert torch.allclose(cosine_self_similarity(torch.ones(1, 3, 4)), torch.ones(1, 3, 3))


def test_structure_distance_identity_symmetry_and_sign(tiny_vit):
    a, b = _imgs(2, 40, 40, seed=18), _imgs(2, 40, 40, seed=19)
    assert torch.equal(structure_distance(a, a, net=tiny_vit, short_side=32), torch.zeros(2))
    d1, d2 = structure_distance(a, b, net=tiny_vit, short_side=32), structure_distance(b, a, net=tiny_vit, short_side=32)
    assert torch.allclose(d1, d2, atol=1e-7) and (d1 > 0).all()


def test_short_side_resize_follows_torchvision_resize_with_max_size():
    assert short_side_resize(torch.zeros(1, 3, 300, 500), 224, 480).shape[-2:] == (224, 373)
    assert short_side_resize(torch.zeros(1, 3, 100, 500), 224, 480).shape[-2:] == (96, 480)


# ---- identity


@pytest.fixture(scope="module")
def random_arcface():
    torch.manual_seed(0)
    return IRSE50().eval()


def test_identity_similarity_is_one_for_identical_faces_and_symmetric(random_arcface):
    a, b = _imgs(1, 256, 256, seed=20), _imgs(1, 256, 256, seed=21)
    assert float(identity_similarity(a, a, net=random_arcface)) == pytest.approx(1.0, abs=1e-5)
    s1, s2 = identity_similarity(a, b, net=random_arcface), identity_similarity(b, a, net=random_arcface)
    assert torch.allclose(s1, s2, atol=1e-6) and float(s1) < 1 - 1e-4


def test_identity_uses_only_the_psp_face_box(random_arcface):
    a = _imgs(1, 256, 256, seed=22)
    outside = a.clone()
    outside[..., :35, :] = 1.0  # rows above the crop
    outside[..., :, 220:] = -1.0  # columns right of it
    assert face_crop(a).shape == (1, 3, 112, 112)
    assert torch.equal(face_crop(a), face_crop(outside))
    assert float(identity_similarity(a, outside, net=random_arcface)) == pytest.approx(1.0, abs=1e-6)


# ---- DreamSim


@pytest.fixture(scope="module")
def tiny_dreamsim():
    torch.manual_seed(0)
    return ds.DreamSim([ds.DinoBranch(VisionTransformer(patch_size=16, embed_dim=32, depth=2, num_heads=4))], size=32)


def test_dreamsim_identity_symmetry_and_range(tiny_dreamsim):
    a, b = _imgs(2, 40, 40, seed=23), _imgs(2, 40, 40, seed=24)
    assert torch.allclose(tiny_dreamsim.distance(a, a), torch.zeros(2), atol=1e-6)
    d1, d2 = tiny_dreamsim.distance(a, b), tiny_dreamsim.distance(b, a)
    assert torch.allclose(d1, d2, atol=1e-6) and ((d1 > 0) & (d1 <= 2)).all()


def test_dreamsim_dino_feature_is_the_cls_of_the_last_block_before_the_norm(tiny_dreamsim):
    branch = tiny_dreamsim.branches[0]
    x01 = (_imgs(1, 32, 32, seed=25) + 1) / 2
    seen = {}
    handle = branch.vit.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        branch.vit(imagenet_normalize(x01 * 2 - 1))  # DreamSim feeds DINO ImageNet-normalised [0, 1] images
    finally:
        handle.remove()
    assert torch.allclose(branch(x01), seen["out"][:, 0], atol=1e-6)


def test_dreamsim_embedding_is_normalised_then_centred(tiny_dreamsim):
    e = tiny_dreamsim.embed(_imgs(3, 32, 32, seed=26))
    assert torch.allclose(e.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert ((e.norm(dim=1) > 0.5) & (e.norm(dim=1) <= 1 + 1e-6)).all()


def test_diversity_is_zero_for_identical_images_and_order_free(tiny_dreamsim):
    a = _imgs(1, 32, 32, seed=27)
    assert ds.diversity(a.expand(3, -1, -1, -1), model=tiny_dreamsim) == pytest.approx(0.0, abs=1e-6)
    imgs = _imgs(3, 32, 32, seed=28)
    assert ds.diversity(imgs, model=tiny_dreamsim) == pytest.approx(ds.diversity(imgs.flip(0), model=tiny_dreamsim), rel=1e-6)


def test_dreamsim_lora_adapter_folder_is_merged_into_qkv(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(patch_size=16, embed_dim=32, depth=2, num_heads=4)
    before = vit.blocks[1].attn.qkv.weight.clone()
    g = torch.Generator().manual_seed(29)
    a, b = torch.randn(4, 32, generator=g), torch.randn(96, 4, generator=g)
    adapter = {}
    for i in range(2):  # PEFT's saved names for DreamSim's ViT wrapper
        adapter[f"base_model.model.model.blocks.{i}.attn.qkv.lora_A.weight"] = a
        adapter[f"base_model.model.model.blocks.{i}.attn.qkv.lora_B.weight"] = b
    folder = tmp_path / "dino_vitb16_lora"
    folder.mkdir()
    torch.save(adapter, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2.0, "target_modules": ["qkv"]}))
    tensors, scale = ds.load_lora_folder(folder)
    assert scale == 0.5
    assert ds.merge_lora(vit, tensors, scale) == 2
    assert torch.allclose(vit.blocks[1].attn.qkv.weight, before + 0.5 * b @ a, atol=1e-6)


def test_dreamsim_without_its_checkpoint_says_where_to_get_it(monkeypatch, tmp_path):
    from styleforge.errors import ModelNotFoundError

    monkeypatch.delenv("STYLEFORGE_DREAMSIM_DIR", raising=False)
    with pytest.raises(ModelNotFoundError, match="dreamsim_checkpoint.zip") as e:
        ds.DreamSim.from_pretrained(offline=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelNotFoundError, match="clip_vitb16_pretrain.pth.tar not found"):
        ds.load_clip_branch(tmp_path / "clip_vitb16_pretrain.pth.tar", "clip")


def _tiny_clip_tower(kind):
    torch.manual_seed(1)
    return ds.clip_as_dino_vit(kind, patch_size=16, embed_dim=32, depth=2, num_heads=4)


def test_clip_branch_is_the_projected_cls_of_a_pre_normed_tower():
    vit = _tiny_clip_tower("clip")
    assert isinstance(vit.pos_drop, nn.LayerNorm) and vit.norm.eps == 1e-5 and vit.blocks[0].norm1.eps == 1e-5
    assert vit.blocks[0].mlp.act is not torch.nn.functional.gelu  # OpenAI CLIP: QuickGELU
    assert _tiny_clip_tower("open_clip").blocks[0].mlp.act is torch.nn.functional.gelu
    proj = torch.randn(32, 12, generator=torch.Generator().manual_seed(2))
    branch = ds.ClipBranch(vit, proj)
    x01 = (_imgs(2, 32, 32, seed=30) + 1) / 2
    mean, std = torch.tensor(ds.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(ds.CLIP_STD).view(1, 3, 1, 1)
    tokens = vit.prepare_tokens((x01 - mean) / std)  # by hand: ln_pre on the embedded tokens, blocks, ln_post, proj
    for block in vit.blocks:
        tokens = block(tokens)
    assert torch.allclose(branch(x01), vit.norm(tokens)[:, 0] @ proj, atol=1e-5)


def test_clip_as_dino_file_layout_loads_with_its_projection(tmp_path):
    from styleforge.metrics import weights as W

    source = _tiny_clip_tower("clip")
    state = dict(source.state_dict())
    # DreamSim's converted file: the DINO layout, ln_pre stored as pos_drop, plus the visual projection
    assert {"pos_drop.weight", "pos_drop.bias", "blocks.1.attn.qkv.weight", "patch_embed.proj.bias"} <= set(state)
    state["proj"] = torch.randn(32, 12)
    torch.save({"state_dict": state}, tmp_path / "clip_vitb16_pretrain.pth.tar")
    from styleforge.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not a DreamSim clip ViT-B/16 checkpoint: .*wrong shape"):
        ds.load_clip_branch(tmp_path / "clip_vitb16_pretrain.pth.tar", "clip")  # a tiny tower is not ViT-B/16
    loaded = dict(W.read_state_dict(tmp_path / "clip_vitb16_pretrain.pth.tar"))
    assert torch.equal(loaded.pop("proj"), state["proj"])
    target = _tiny_clip_tower("clip")
    W.load_into(target, loaded, what="tower")
    assert torch.equal(target.pos_drop.weight, source.pos_drop.weight)


def test_dreamsim_ensemble_concatenates_branch_embeddings():
    torch.manual_seed(0)
    dino = ds.DinoBranch(VisionTransformer(patch_size=16, embed_dim=32, depth=2, num_heads=4))
    clip = ds.ClipBranch(_tiny_clip_tower("clip"), torch.randn(32, 12))
    open_clip = ds.ClipBranch(_tiny_clip_tower("open_clip"), torch.randn(32, 12))
    model = ds.DreamSim([dino, clip, open_clip], size=32, normalize_embeds=False)
    x = _imgs(2, 32, 32, seed=31)
    e = model.embed(x)
    x01 = (x + 1) / 2
    assert e.shape == (2, 32 + 12 + 12)
    assert torch.allclose(e, torch.cat([dino(x01), clip(x01), open_clip(x01)], dim=1), atol=1e-5)
    full = ds.DreamSim([dino, clip, open_clip], size=32)
    assert torch.allclose(full.distance(x, x), torch.zeros(2), atol=1e-6)
