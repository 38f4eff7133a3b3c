"""The metric networks' state dicts have the published checkpoints' keys and shapes, and published files load.

The expected layouts are written here from each architecture's published definition (torchvision's VGG/AlexNet
and Inception3, pytorch-fid's FID Inception, the lpips package's heads, DINO's vision_transformer.py, TreB1eN's
IR-SE50), independently of the toolkit's module code; parameter totals are torchvision's published counts.
"""

import pytest
import torch

from styleforge.errors import ModelNotFoundError
from styleforge.metrics import weights as W
from styleforge.metrics.nets.inception import InceptionV3
from styleforge.metrics.nets.irse import IRSE50
from styleforge.metrics.nets.vgg import AlexNet, vgg16, vgg19
from styleforge.metrics.nets.vit import dino_vitb8, dino_vitb16

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _on_meta(factory):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        return factory()


def _layout(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_layout(prefix, cout, cin, kh, kw, bias=True):
    out = {f"{prefix}.weight": (cout, cin, kh, kw)}
    if bias:
        out[f"{prefix}.bias"] = (cout,)
    return out


def _bn_layout(prefix, c):
    return {f"{prefix}.{n}": (() if n == "num_batches_tracked" else (c,)) for n in BN}


# ---- torchvision VGG / AlexNet


def _torchvision_vgg(convs, classifier=True):
    layout = {}
    for index, cin, cout in convs:
        layout.update(_conv_layout(f"features.{index}", cout, cin, 3, 3))
    if classifier:
        for index, (cout, cin) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
            layout[f"classifier.{index}.weight"] = (cout, cin)
            layout[f"classifier.{index}.bias"] = (cout,)
    return layout


VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
               (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
VGG19_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
               (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), (28, 512, 512),
               (30, 512, 512), (32, 512, 512), (34, 512, 512)]


def test_vgg16_matches_torchvision_layout_and_count():
    net = _on_meta(lambda: vgg16(classifier=True))
    assert _layout(net) == _torchvision_vgg(VGG16_CONVS)
    assert _num_params(net) == 138_357_544  # torchvision's published count for vgg16


def test_vgg19_matches_torchvision_layout_and_count():
    net = _on_meta(lambda: vgg19(classifier=True))
    assert _layout(net) == _torchvision_vgg(VGG19_CONVS)
    assert _num_params(net) == 143_667_240


def test_vgg19_relu_taps_are_the_gram_layers():
    from styleforge.metrics.gram import GRAM_LAYERS
    from styleforge.metrics.nets.vgg import VGG19_RELU

    net = _on_meta(vgg19)
    taps = [VGG19_RELU[name] for name in GRAM_LAYERS]
    # relu_k_1 follows the first conv of block k: conv index + 1, and that conv's input is the previous block's width
    assert taps == [1, 6, 11, 20, 29]
    assert [net.features[t - 1].out_channels for t in taps] == [64, 128, 256, 512, 512]
    assert all(isinstance(net.features[t], torch.nn.ReLU) for t in taps)


def test_alexnet_matches_torchvision_layout_and_count():
    net = _on_meta(lambda: AlexNet(classifier=True))
    expected = {}
    for index, (cout, cin, k) in zip((0, 3, 6, 8, 10), ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))):
        expected.update(_conv_layout(f"features.{index}", cout, cin, k, k))
    for index, (cout, cin) in zip((1, 4, 6), ((4096, 9216), (4096, 4096), (1000, 4096))):
        expected.update({f"classifier.{index}.weight": (cout, cin), f"classifier.{index}.bias": (cout,)})
    assert _layout(net) == expected
    assert _num_params(net) == 61_100_840


@pytest.mark.parametrize("net,channels", [("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))])
def test_lpips_heads_match_the_lpips_v01_files(net, channels):
    from styleforge.metrics.lpips import LPIPS

    model = LPIPS.build(net)
    assert _layout(model.heads) == {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(channels)}
    # the taps are the ReLUs whose outputs have those widths (lpips slices end at them)
    taps = [model.net.features[t] for t in model.taps]
    assert all(isinstance(t, torch.nn.ReLU) for t in taps)


# ---- Inception-v3 (torchvision Inception3 names; pytorch-fid's FID weights)


def _basic(prefix, cout, cin, kh, kw=None):
    kw = kh if kw is None else kw
    return {**_conv_layout(f"{prefix}.conv", cout, cin, kh, kw, bias=False), **_bn_layout(f"{prefix}.bn", cout)}


def _inception_a(p, cin, pool):
    return {**_basic(f"{p}.branch1x1", 64, cin, 1), **_basic(f"{p}.branch5x5_1", 48, cin, 1),
            **_basic(f"{p}.branch5x5_2", 64, 48, 5), **_basic(f"{p}.branch3x3dbl_1", 64, cin, 1),
            **_basic(f"{p}.branch3x3dbl_2", 96, 64, 3), **_basic(f"{p}.branch3x3dbl_3", 96, 96, 3),
            **_basic(f"{p}.branch_pool", pool, cin, 1)}


def _inception_c(p, c7):
    return {**_basic(f"{p}.branch1x1", 192, 768, 1), **_basic(f"{p}.branch7x7_1", c7, 768, 1),
            **_basic(f"{p}.branch7x7_2", c7, c7, 1, 7), **_basic(f"{p}.branch7x7_3", 192, c7, 7, 1),
            **_basic(f"{p}.branch7x7dbl_1", c7, 768, 1), **_basic(f"{p}.branch7x7dbl_2", c7, c7, 7, 1),
            **_basic(f"{p}.branch7x7dbl_3", c7, c7, 1, 7), **_basic(f"{p}.branch7x7dbl_4", c7, c7, 7, 1),
            **_basic(f"{p}.branch7x7dbl_5", 192, c7, 1, 7), **_basic(f"{p}.branch_pool", 192, 768, 1)}


def _inception_e(p, cin):
    return {**_basic(f"{p}.branch1x1", 320, cin, 1), **_basic(f"{p}.branch3x3_1", 384, cin, 1),
            **_basic(f"{p}.branch3x3_2a", 384, 384, 1, 3), **_basic(f"{p}.branch3x3_2b", 384, 384, 3, 1),
            **_basic(f"{p}.branch3x3dbl_1", 448, cin, 1), **_basic(f"{p}.branch3x3dbl_2", 384, 448, 3),
            **_basic(f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), **_basic(f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
            **_basic(f"{p}.branch_pool", 192, cin, 1)}


def _pytorch_fid_layout(num_classes=1008):
    layout = {**_basic("Conv2d_1a_3x3", 32, 3, 3), **_basic("Conv2d_2a_3x3", 32, 32, 3), **_basic("Conv2d_2b_3x3", 64, 32, 3),
              **_basic("Conv2d_3b_1x1", 80, 64, 1), **_basic("Conv2d_4a_3x3", 192, 80, 3),
              **_inception_a("Mixed_5b", 192, 32), **_inception_a("Mixed_5c", 256, 64), **_inception_a("Mixed_5d", 288, 64),
              **_basic("Mixed_6a.branch3x3", 384, 288, 3), **_basic("Mixed_6a.branch3x3dbl_1", 64, 288, 1),
              **_basic("Mixed_6a.branch3x3dbl_2", 96, 64, 3), **_basic("Mixed_6a.branch3x3dbl_3", 96, 96, 3),
              **_inception_c("Mixed_6b", 128), **_inception_c("Mixed_6c", 160), **_inception_c("Mixed_6d", 160),
              **_inception_c("Mixed_6e", 192),
              **_basic("Mixed_7a.branch3x3_1", 192, 768, 1), **_basic("Mixed_7a.branch3x3_2", 320, 192, 3),
              **_basic("Mixed_7a.branch7x7x3_1", 192, 768, 1), **_basic("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
              **_basic("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), **_basic("Mixed_7a.branch7x7x3_4", 192, 192, 3),
              **_inception_e("Mixed_7b", 1280), **_inception_e("Mixed_7c", 2048)}
    layout.update({"fc.weight": (num_classes, 2048), "fc.bias": (num_classes,)})
    return layout


def test_fid_inception_matches_pytorch_fid_layout():
    net = _on_meta(lambda: InceptionV3(num_classes=1008, fid_blocks=True))
    assert _layout(net) == _pytorch_fid_layout(1008)


def test_inception_parameter_count_is_torchvisions_without_aux_head():
    # torchvision inception_v3: 27,161,264 parameters, of which the auxiliary head (not in FID files) is 3,326,696
    net = _on_meta(lambda: InceptionV3(num_classes=1000, fid_blocks=False))
    assert _num_params(net) == 27_161_264 - 3_326_696


def test_fid_inception_features_are_2048_pool3():
    torch.manual_seed(0)
    net = InceptionV3().eval()
    assert net(torch.rand(1, 3, 80, 80) * 2 - 1).shape == (1, 2048)
    assert net.trunk(torch.zeros(1, 3, 299, 299), stop_at_block1=True).shape[1] == 192  # pytorch-fid block 1


# ---- DINO ViT


def _dino_layout(patch, dim=768, depth=12, img=224):
    layout = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + (img // patch) ** 2, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}"
        layout.update({f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,),
                       f"{b}.attn.qkv.weight": (3 * dim, dim), f"{b}.attn.qkv.bias": (3 * dim,),
                       f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,),
                       f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,),
                       f"{b}.mlp.fc1.weight": (4 * dim, dim), f"{b}.mlp.fc1.bias": (4 * dim,),
                       f"{b}.mlp.fc2.weight": (dim, 4 * dim), f"{b}.mlp.fc2.bias": (dim,)})
    return layout


def test_dino_vitb8_and_vitb16_match_dino_layout():
    assert _layout(_on_meta(dino_vitb8)) == _dino_layout(8)
    assert _layout(_on_meta(dino_vitb16)) == _dino_layout(16)


# ---- ArcFace IR-SE50


def _irse50_layout():
    layout = {**_conv_layout("input_layer.0", 64, 3, 3, 3, bias=False), **_bn_layout("input_layer.1", 64),
              "input_layer.2.weight": (64,)}
    units = []
    for cin, depth, n in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):  # get_blocks(50)
        units += [(cin, depth)] + [(depth, depth)] * (n - 1)
    assert len(units) == 24
    for i, (cin, depth) in enumerate(units):
        b = f"body.{i}"
        if cin != depth:  # otherwise the shortcut is a parameter-free MaxPool2d(1, stride)
            layout.update({**_conv_layout(f"{b}.shortcut_layer.0", depth, cin, 1, 1, bias=False),
                           **_bn_layout(f"{b}.shortcut_layer.1", depth)})
        layout.update({**_bn_layout(f"{b}.res_layer.0", cin),
                       **_conv_layout(f"{b}.res_layer.1", depth, cin, 3, 3, bias=False),
                       f"{b}.res_layer.2.weight": (depth,),
                       **_conv_layout(f"{b}.res_layer.3", depth, depth, 3, 3, bias=False),
                       **_bn_layout(f"{b}.res_layer.4", depth),
                       f"{b}.res_layer.5.fc1.weight": (depth // 16, depth, 1, 1),
                       f"{b}.res_layer.5.fc2.weight": (depth, depth // 16, 1, 1)})
    layout.update({**_bn_layout("output_layer.0", 512), "output_layer.3.weight": (512, 512 * 7 * 7),
                   "output_layer.3.bias": (512,), **_bn_layout("output_layer.4", 512)})
    return layout


def test_irse50_matches_model_ir_se50_layout():
    assert _layout(_on_meta(IRSE50)) == _irse50_layout()


def test_irse50_embeds_112_faces_to_unit_512_vectors():
    torch.manual_seed(0)
    net = IRSE50().eval()
    e = net.embed(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert e.shape == (2, 512)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


# ---- loading published files, and the one-line error when they are absent


def _checkpoint_like(layout, random_keys=()):
    """A state dict with the layout: ``random_keys`` get random values, the rest a constant broadcast view (torch.save
    stores a view's one-element storage, so a 100M-parameter layout costs bytes on disk, not hundreds of MB)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in layout.items():
        if k in random_keys:
            state[k] = torch.randn(shape, generator=g)
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        else:
            state[k] = torch.full((1,) * len(shape), 0.5).expand(shape)
    return state


def test_a_file_with_the_published_layout_loads_strictly(tmp_path):
    from styleforge.metrics.gram import build_vgg19

    state = _checkpoint_like(_torchvision_vgg(VGG19_CONVS), random_keys=("features.34.weight", "features.0.bias"))
    path = tmp_path / W.VGG19.filename
    torch.save(state, path)
    net = build_vgg19(path)  # a file path; the classifier in the file is not needed and is skipped
    assert torch.equal(net.features[34].weight, state["features.34.weight"])
    assert torch.equal(net.features[2].weight, torch.full((64, 64, 3, 3), 0.5))
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    net2 = build_vgg19(tmp_path)  # a folder holding the standard file name
    assert torch.equal(net2.features[0].bias, state["features.0.bias"])


def test_lpips_loads_backbone_and_heads_files(tmp_path):
    from styleforge.metrics.lpips import LPIPS

    backbone = _checkpoint_like(_layout(_on_meta(lambda: AlexNet(classifier=True))), random_keys=("features.10.weight",))
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(backbone, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(heads, tmp_path / "alex.pth")
    model = LPIPS.from_pretrained("alex", backbone_weights=tmp_path, heads_weights=tmp_path / "alex.pth", offline=True)
    assert torch.equal(model.heads.lin2.model[1].weight, heads["lin2.model.1.weight"])
    assert torch.equal(model.net.features[10].weight, backbone["features.10.weight"])


def test_wrapped_and_prefixed_checkpoints_are_unwrapped(tmp_path):
    from styleforge.metrics.identity import build_arcface

    state = {"module." + k: v for k, v in _checkpoint_like(_irse50_layout(), random_keys=("input_layer.0.weight",)).items()}
    torch.save({"state_dict": state}, tmp_path / "model_ir_se50.pth")
    net = build_arcface(tmp_path / "model_ir_se50.pth")
    assert torch.equal(net.input_layer[0].weight, state["module.input_layer.0.weight"])


def test_dino_checkpoints_load_with_their_head_skipped(tmp_path):
    from styleforge.metrics.structure import build_dino_vitb8

    state = _checkpoint_like(_dino_layout(8), random_keys=("blocks.11.attn.qkv.weight", "pos_embed"))
    state["head.mlp.0.weight"] = torch.zeros(2048, 768)  # full DINO checkpoints also carry the projection head
    torch.save({"teacher": state}, tmp_path / "dino_vitbase8_pretrain.pth")
    net = build_dino_vitb8(tmp_path)
    assert torch.equal(net.blocks[11].attn.qkv.weight, state["blocks.11.attn.qkv.weight"])
    assert torch.equal(net.pos_embed, state["pos_embed"])


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    from styleforge.metrics.nets.vit import VisionTransformer

    torch.manual_seed(0)
    source, target = (VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2) for _ in range(2))
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    W.load_into(target, W.read_state_dict(tmp_path / "vit.safetensors"), what="ViT")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    from styleforge.metrics.gram import build_vgg19

    torch.save(_checkpoint_like(_torchvision_vgg(VGG16_CONVS)), tmp_path / "vgg16.pth")
    with pytest.raises(ModelNotFoundError) as e:
        build_vgg19(tmp_path / "vgg16.pth")
    assert "\n" not in str(e.value) and "features.16.weight" in str(e.value)


def test_absent_weights_name_the_file_and_how_to_provide_it(tmp_path, monkeypatch):
    from styleforge.metrics.gram import build_vgg19
    from styleforge.metrics.identity import build_arcface

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)
    with pytest.raises(ModelNotFoundError) as e:
        build_vgg19(offline=True)
    msg = str(e.value)
    assert "\n" not in msg and "vgg19-dcbb9e9d.pth" in msg and "https://download.pytorch.org/models/vgg19" in msg
    with pytest.raises(ModelNotFoundError) as e:
        build_arcface(tmp_path / "nowhere" / "model_ir_se50.pth")
    assert "model_ir_se50.pth" in str(e.value) and "file not found" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="no vgg19-dcbb9e9d.pth in folder"):
        build_vgg19(tmp_path)


def test_weights_are_found_in_the_env_folder_and_torch_cache(tmp_path, monkeypatch):
    state = {"placeholder": torch.zeros(1)}  # resolution looks at names only; reading is tested above
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(state, folder / W.DINO_VITB8.filename)
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(folder))
    assert W.resolve_weight_file(W.DINO_VITB8, offline=True) == folder / W.DINO_VITB8.filename
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / W.DINO_VITB8.filename)
    assert W.resolve_weight_file(W.DINO_VITB8, offline=True) == cache / W.DINO_VITB8.filename


def test_hub_sources_are_fetched_by_standard_name_and_fail_in_one_line_offline():
    with pytest.raises(ModelNotFoundError) as e:
        W.resolve_weight_file(W.VGG19, "someone/vgg-mirror", offline=True)
    msg = str(e.value)
    assert "hub someone/vgg-mirror/vgg19-dcbb9e9d.pth" in msg and "offline" in msg and "\n" not in msg
    with pytest.raises(ModelNotFoundError, match="hub someone/mirror/weights/v1.pth"):
        W.resolve_weight_file(W.VGG19, "someone/mirror/weights/v1.pth", offline=True)


def test_dreamsim_clip_towers_match_the_clip_as_dino_layout():
    from styleforge.metrics.dreamsim import clip_as_dino_vit

    # dreamsim's load_clip_as_dino: vit_base(patch_size=16) with pos_drop replaced by a LayerNorm (CLIP's ln_pre)
    expected = {**_dino_layout(16), "pos_drop.weight": (768,), "pos_drop.bias": (768,)}
    for kind in ("clip", "open_clip"):
        assert _layout(_on_meta(lambda: clip_as_dino_vit(kind))) == expected
