"""The region stylizer's full-resolution lift (styleforge.region.lift) and its use by RegionStylizer and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.cli.main import main
from styleforge.errors import InputError
from styleforge.io import load_image, read_metadata
from styleforge.region import inference as inf
from styleforge.region.lift import apply_coefficients, fit_coefficients, lift, paste_image
from styleforge.region.lift_settings import DEFAULT_SIGMA
from styleforge.region.masks import feather_inside
from styleforge.region.model import build_models
from styleforge.region.presets import get_preset


def _photo(h, w, seed=0, grey=False):
    """A smooth colour field plus fine texture: detail at full resolution that the working size cannot hold."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(5 * x + c) * np.cos(3 * y - c) for c in range(3)], -1)
    if grey:
        base = base.mean(-1, keepdims=True)
    img = np.clip(base + rs.normal(0, 0.08, base.shape), 0, 1) * 255
    return np.repeat(img, 3, -1).round().astype(np.uint8) if grey else img.round().astype(np.uint8)


def _small(img, w, h):
    """(3, h, w) in [0, 1]: the working-size copy of a uint8 image."""
    return torch.from_numpy(np.array(Image.fromarray(img).resize((w, h), Image.BICUBIC))).permute(2, 0, 1).double() / 255


@pytest.mark.parametrize("shape,grey", [((101, 67), False), ((45, 130), False), ((77, 77), True)])
def test_identity_edit_lifts_to_the_photo(shape, grey):
    img = _photo(*shape, grey=grey)
    g = _small(img, 17, 13)
    out = lift(g, g.clone(), img)
    assert np.abs(out.astype(int) - img).max() <= 1


@pytest.mark.parametrize("grey", [False, True])
def test_global_colour_change_is_reproduced_at_full_resolution(grey):
    img = _photo(90, 121, seed=1, grey=grey)
    g = _small(img, 24, 18)
    gain = torch.tensor([0.55, 0.9, 1.0], dtype=torch.float64)[:, None, None]
    out = lift(g, g * gain, img)
    expected = img * gain.numpy().reshape(1, 1, 3)
    assert np.abs(out - expected).max() <= 0.5 + 1e-3  # exact up to the 8-bit rounding
    # any affine colour map (a matrix and an offset), with the paper's zero prior as well
    matrix = torch.tensor([[0.6, 0.2, 0.1], [0.05, 0.7, 0.1], [0.1, 0.1, 0.5]], dtype=torch.float64)
    if not grey:
        out = lift(g, torch.einsum("ij,jhw->ihw", matrix, g) + 0.1, img)
        expected = np.einsum("ij,hwj->hwi", matrix.numpy(), img.astype(np.float64)) + 25.5
        assert np.abs(out - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-3


def test_lift_keeps_detail_that_upsampling_loses():
    img = _photo(160, 200, seed=2)
    g = _small(img, 40, 32)
    target = g.flip(0) * 0.8 + 0.1  # a colour change (channels swapped, contrast lowered)
    out = lift(g, target, img).astype(float)
    upsampled = np.asarray(Image.fromarray((target.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                           .resize((200, 160), Image.BICUBIC)).astype(float)
    detail = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert detail(out) > 0.7 * detail(img[..., ::-1].astype(float))  # 0.8 of the contrast is kept
    assert detail(upsampled) < 0.5 * detail(out)


def test_bands_join_seamlessly_and_outside_pixels_stay():
    img = _photo(97, 61, seed=3)
    coefficients = fit_coefficients(_small(img, 15, 24), torch.rand(3, 24, 15, dtype=torch.float64))
    whole = apply_coefficients(coefficients, img, tile_pixels=10**9)
    assert np.array_equal(whole, apply_coefficients(coefficients, img, tile_pixels=61 * 7 + 3))  # bands of 7 rows
    assert np.array_equal(whole, apply_coefficients(coefficients, img, tile_pixels=1))  # one row at a time
    weight = torch.zeros(97, 61)
    weight[20:70, 5:40] = torch.rand(50, 35) * 0.5 + 0.5
    pasted = apply_coefficients(coefficients, img, weight, tile_pixels=200)
    outside = weight.numpy() == 0
    assert np.array_equal(pasted[outside], img[outside])
    assert np.array_equal(pasted[weight.numpy() == 1], whole[weight.numpy() == 1])
    assert np.array_equal(paste_image(img, whole, torch.zeros(97, 61)), img)


def test_lift_settings_are_checked():
    g = torch.rand(3, 8, 8, dtype=torch.float64)
    for bad in (dict(radius=-1), dict(radius=1.5), dict(eps=0), dict(prior="identity"), dict(sigma=-1)):
        with pytest.raises(InputError):
            fit_coefficients(g, g, **bad)
    with pytest.raises(InputError):
        inf.lift_settings(output_size="huge")
    with pytest.raises(InputError):
        inf.lift_settings(detail="sharp")


@pytest.mark.parametrize("sigma", [1.5, 9.0])  # 9 px runs on the coarser grid
def test_feather_inside_stays_inside_the_mask(sigma):
    mask = torch.zeros(1, 1, 200, 240)
    mask[..., 20:180, 40:220] = 1
    weight = feather_inside(mask, sigma)
    assert weight[mask == 0].abs().max() == 0
    assert weight.max() <= 1 and weight[..., 100, 130] > 0.99  # deep inside
    assert 0 < weight[..., 100, 40 + round(2 * sigma)] < 0.5  # 2 sigma inside the edge: softened
    assert torch.equal(feather_inside(mask, 0), mask)


# ---- RegionStylizer and CLI at the content's own size (tiny random test model)


@pytest.fixture(scope="module")
def stylizer(tmp_path_factory):
    torch.manual_seed(0)
    nets = build_models(get_preset("test"))
    folder = inf.save_model(tmp_path_factory.mktemp("lift") / "model", nets["encoder"], nets["generator"])
    return inf.RegionStylizer.from_pretrained(folder).to("cpu")


@pytest.mark.parametrize("size,mode,mask_size", [((75, 41), "RGB", (75, 41)), ((41, 75), "L", (13, 29)),
                                                 ((64, 50), "RGBA", (300, 200))])
def test_stylizer_keeps_the_photo_outside_the_mask(stylizer, tmp_path, size, mode, mask_size):
    w, h = size
    photo = Image.fromarray(_photo(h, w, seed=4, grey=mode == "L")).convert(mode)
    if mode == "RGBA":
        alpha = np.full((h, w), 255, np.uint8)
        alpha[:10] = 128  # half-transparent rows are composited onto white, as every input is
        photo.putalpha(Image.fromarray(alpha))
    photo.save(tmp_path / "photo.png")
    mw, mh = mask_size
    mask = np.zeros((mh, mw), np.uint8)
    mask[mh // 4: 3 * mh // 4, mw // 3:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    style = Image.fromarray(_photo(40, 40, seed=5)[..., ::-1].copy())
    content = np.asarray(load_image(tmp_path / "photo.png"))
    weight = stylizer.paste_weight(tmp_path / "mask.png", w, h)
    outside = weight.numpy() == 0
    for detail in ("guided", "none"):
        out = np.asarray(stylizer(tmp_path / "photo.png", style=style, mask=tmp_path / "mask.png", detail=detail).images[0])
        assert out.shape == (h, w, 3)
        assert np.array_equal(out[outside], content[outside])
        assert not np.array_equal(out[~outside], content[~outside])
    # two edits chain: the second reads the first's full-resolution result
    two = np.asarray(stylizer(tmp_path / "photo.png", style=[style, style], mask=[tmp_path / "mask.png"] * 2,
                              feather=1.0).images[0])
    assert two.shape == (h, w, 3) and np.array_equal(two[outside], content[outside])


def test_stylizer_output_sizes_and_interpolation(stylizer, tmp_path):
    Image.fromarray(_photo(50, 70, seed=6)).save(tmp_path / "photo.png")
    style = Image.fromarray(_photo(30, 30, seed=7))
    assert stylizer(tmp_path / "photo.png", style=style).images[0].size == (70, 50)  # global transfer, lifted
    working = stylizer(tmp_path / "photo.png", style=style, output_size="working").images[0]
    assert working.size == stylizer.working_size(70, 50)
    frames = stylizer.interpolate(tmp_path / "photo.png", style, alphas=(0, 1), what="style")
    assert [f.size for f in frames] == [(70, 50)] * 2
    assert stylizer.interpolate(tmp_path / "photo.png", style, alphas=(0.5,), what="content")[0].size == (70, 50)


def test_cli_writes_the_content_size_and_records_the_lift(stylizer, tmp_path):
    Image.fromarray(_photo(53, 87, seed=8)).save(tmp_path / "photo.png")
    Image.fromarray(_photo(32, 32, seed=9)).save(tmp_path / "style.png")
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 3:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    folder = stylizer.save_pretrained(tmp_path / "model")
    base = ["region", "apply", "--model", str(folder), "--content", str(tmp_path / "photo.png"), "--style",
            str(tmp_path / "style.png"), "--mask", str(tmp_path / "mask.png"), "--device", "cpu"]
    out = tmp_path / "out.png"
    assert main(base + ["-o", str(out), "--lift-radius", "1", "--lift-eps", "0.05"]) == 0
    assert Image.open(out).size == (87, 53)
    assert Image.open(tmp_path / "out.strip.png").height == 512
    meta = read_metadata(out)
    assert meta["output_size"] == "native" and meta["detail"] == "guided" and meta["paste_back"] is True
    assert meta["lift"] == {"radius": 1, "eps": 0.05, "prior": "global", "sigma": DEFAULT_SIGMA}
    content = np.asarray(load_image(tmp_path / "photo.png"))
    outside = stylizer.paste_weight(tmp_path / "mask.png", 87, 53).numpy() == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB"))[outside], content[outside])
    old = tmp_path / "old.png"
    assert main(base + ["-o", str(old), "--no-paste-back", "--output-size", "working", "--strip", "false"]) == 0
    assert Image.open(old).size == stylizer.working_size(87, 53)
    assert read_metadata(old)["paste_back"] is False and read_metadata(old)["lift"] is None
    assert main(base + ["-o", str(tmp_path / "bad.png"), "--lift-eps", "0"]) == 2
    assert not (tmp_path / "bad.png").exists()
