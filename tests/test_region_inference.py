"""Region stylizer inference: swap plumbing, region composition, interpolation, the Python API and the CLI
(spec §8 B, C, F), on the test preset."""

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.cli.main import main
from styleforge.errors import InputError
from styleforge.io import read_metadata
from styleforge.region import inference as inf
from styleforge.region.masks import dilate_mask, resample_mask
from styleforge.region.model import build_models
from styleforge.region.presets import get_preset


@pytest.fixture()
def nets():
    torch.manual_seed(0)
    models = build_models(get_preset("test"))
    enc, gen = models["encoder"].eval(), models["generator"].eval()
    return enc, gen


def _x(n=2, h=32, w=32, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _block_mask(n=2):
    m = torch.zeros(n, 1, 32, 32)
    m[:, :, 8:24, 4:20] = 1  # aligned to the 4-pixel grid of the test preset's 2 downsamplings
    return m


# ---- B. swap plumbing


def test_transfer_with_own_style_is_reconstruction(nets):
    enc, gen = nets
    a = _x()
    assert torch.equal(inf.transfer(enc, gen, a, a), inf.reconstruct(enc, gen, a))


def test_transfer_matches_hand_built_codes(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    with torch.no_grad():
        c_a, _ = enc(a)
        _, s_b = enc(b)
        assert torch.equal(inf.transfer(enc, gen, a, b), gen(c_a, s_b))
        assert not torch.equal(inf.transfer(enc, gen, a, b), inf.reconstruct(enc, gen, a))


def test_roll_pairing():
    x = torch.arange(5.0)
    paired = x.roll(1, 0)
    assert all(paired[i] == x[(i - 1) % 5] for i in range(5))
    assert not (paired == x).any()
    neighbours = x[:4].view(2, 2).flip(1).flatten()  # neighbour swap 0<->1, 2<->3
    assert torch.equal(neighbours.view(2, 2).flip(1).flatten(), x[:4])


def test_strength_endpoints(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    assert torch.equal(inf.transfer(enc, gen, a, b, strength=0.0), inf.reconstruct(enc, gen, a))
    assert torch.equal(inf.transfer(enc, gen, a, b, strength=1.0), inf.transfer(enc, gen, a, b))
    m = _block_mask()
    assert torch.equal(inf.region_transfer(enc, gen, a, b, m, strength=0.0), inf.region_transfer(enc, gen, a, a, m))
    assert torch.equal(inf.region_transfer(enc, gen, a, b, m, strength=1.0), inf.region_transfer(enc, gen, a, b, m))
    half = inf.transfer(enc, gen, a, b, strength=0.5)
    assert not torch.equal(half, inf.transfer(enc, gen, a, b)) and not torch.equal(half, inf.reconstruct(enc, gen, a))
    with pytest.raises(InputError):
        inf.transfer(enc, gen, a, b, strength=1.5)


# ---- C. region composition


def test_empty_mask_gives_reconstruction_and_ignores_style(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    empty = torch.zeros(2, 1, 32, 32)
    out, parts = inf.region_transfer(enc, gen, a, b, empty, return_parts=True)
    assert torch.equal(parts["features_composed"], parts["features_content"])
    with torch.no_grad():
        e_a = enc.features(a)
        assert torch.equal(enc.content(parts["features_composed"]), enc.content(e_a))
        assert torch.equal(enc.style(parts["features_composed"]), enc.style(e_a))
    assert torch.equal(out, inf.reconstruct(enc, gen, a))
    other_style = inf.region_transfer(enc, gen, a, -b.flip(-1), empty)
    assert torch.equal(other_style, out)


def test_full_mask_gives_reencoded_global_transfer(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    out, parts = inf.region_transfer(enc, gen, a, b, torch.ones(2, 1, 32, 32), return_parts=True)
    global_out = inf.transfer(enc, gen, a, b)
    assert torch.equal(parts["global"], global_out)
    with torch.no_grad():
        assert torch.equal(parts["features_composed"], enc.features(global_out))
    assert torch.equal(out, inf.reconstruct(enc, gen, global_out))


def test_binary_grid_aligned_mask_picks_one_source_per_cell(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    mask = _block_mask()
    _, parts = inf.region_transfer(enc, gen, a, b, mask, return_parts=True)
    m_e = parts["mask_features"]
    assert set(m_e.unique().tolist()) == {0.0, 1.0}
    composed, e_a, e_g = parts["features_composed"], parts["features_content"], parts["features_global"]
    inside = m_e.expand_as(composed) == 1
    assert torch.equal(composed[inside], e_g[inside])
    assert torch.equal(composed[~inside], e_a[~inside])


def test_soft_mask_composite_is_bounded_and_affine(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    soft = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    _, parts = inf.region_transfer(enc, gen, a, b, soft, return_parts=True)
    e_hat, e_a, e_g = parts["features_composed"], parts["features_content"], parts["features_global"]
    assert (e_hat >= torch.minimum(e_a, e_g) - 1e-6).all() and (e_hat <= torch.maximum(e_a, e_g) + 1e-6).all()
    for t in (0.0, 0.3, 1.0):
        m_e = torch.full_like(parts["mask_features"], t)
        torch.testing.assert_close(inf.compose_features(e_a, e_g, m_e), t * e_g + (1 - t) * e_a, atol=1e-5, rtol=0)


def test_area_resampling_keeps_coverage():
    m = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resample_mask(m, (8, 8), "area").mean(), m.mean(), atol=1e-6, rtol=0)


def test_mask_shapes_broadcast_identically(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    m = _block_mask(1)[0, 0]
    outs = [inf.region_transfer(enc, gen, a, b, mask) for mask in (m, m[None, None], m[None, None].expand(2, 1, 32, 32))]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_successive_edits(nets):
    enc, gen = nets
    a, b, c = _x(), _x(seed=2), _x(seed=3)
    m = _block_mask()
    assert torch.equal(inf.apply_edits(enc, gen, a, [(b, m)]), inf.region_transfer(enc, gen, a, b, m))
    two = inf.apply_edits(enc, gen, a, [(b, m), (c, 1 - m)])
    assert torch.equal(two, inf.region_transfer(enc, gen, inf.region_transfer(enc, gen, a, b, m), c, 1 - m))
    empty = torch.zeros(2, 1, 32, 32)
    expected = a
    for k in range(3):
        expected = inf.reconstruct(enc, gen, expected)
    assert torch.equal(inf.apply_edits(enc, gen, a, [(b, empty), (c, empty), (b, empty)]), expected)
    # no mask = global transfer
    assert torch.equal(inf.apply_edits(enc, gen, a, [(b, None)]), inf.transfer(enc, gen, a, b))


def test_paste_back_keeps_outside_pixels_exactly(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    m = _block_mask()
    out = inf.apply_edits(enc, gen, a, [(b, m)], paste_back=True, paste_margin=0)
    region = inf.region_transfer(enc, gen, a, b, m)
    assert torch.equal(out[(m == 0).expand_as(a)], a[(m == 0).expand_as(a)])
    assert torch.equal(out[(m == 1).expand_as(a)], region[(m == 1).expand_as(a)])


def test_dilate_mask():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 5, 7] = 1
    assert torch.equal(dilate_mask(m, 0), m)
    grown = dilate_mask(m, 2)
    assert torch.equal(grown[..., 3:8, 5:10], torch.ones(1, 1, 5, 5)) and grown.sum() == 25


def test_paste_back_margin_restyles_every_touched_feature_cell(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 9:22, 5:18] = 1  # not aligned to the feature grid: border cells are only partly covered
    f = enc.downsample_factor
    grid = (32 // f, 32 // f)
    out = inf.apply_edits(enc, gen, a, [(b, m)], paste_back=True)  # default margin: one feature cell
    grown = dilate_mask(m, f)
    assert torch.equal(out, m * inf.region_transfer(enc, gen, a, b, grown) + (1 - m) * a)
    touched = resample_mask(m, grid, "area") > 0
    assert (resample_mask(m, grid, "area")[touched] < 1).any()  # without the margin the border cells are mixed
    assert (resample_mask(grown, grid, "area")[touched] == 1).all()  # with it every touched cell is B's
    outside = (m == 0).expand_as(a)
    assert torch.equal(out[outside], a[outside])
    assert not torch.equal(out, inf.apply_edits(enc, gen, a, [(b, m)], paste_back=True, paste_margin=0))
    # the pixel composite is unchanged by the margin
    pixel = inf.apply_edits(enc, gen, a, [(b, m)], paste_back=True, composition="pixel")
    assert torch.equal(pixel, inf.region_transfer(enc, gen, a, b, m, composition="pixel"))
    with pytest.raises(InputError):
        inf.apply_edits(enc, gen, a, [(b, m)], paste_back=True, paste_margin=-1)


def test_pixel_baseline(nets):
    enc, gen = nets
    a, b = _x(), _x(seed=2)
    m = _block_mask()
    out = inf.region_transfer(enc, gen, a, b, m, composition="pixel")
    assert torch.equal(out, m * inf.transfer(enc, gen, a, b) + (1 - m) * a)
    assert torch.equal(inf.region_transfer(enc, gen, a, b, torch.zeros_like(m), composition="pixel"), a)
    cc = inf.region_transfer(enc, gen, a, b, m, composition="content_code")
    assert cc.shape == a.shape and not torch.equal(cc, out)


# ---- F. interpolation


def test_interpolation_endpoints_and_codes(nets):
    enc, gen = nets
    src, tgt = _x(1), _x(1, seed=2)
    alphas = [0.0, 0.5, 1.0]
    with torch.no_grad():
        c_s, s_s = enc(src)
        c_t, s_t = enc(tgt)
        style_rows = inf.interpolate(enc, gen, src, tgt, alphas, "style")
        assert torch.equal(style_rows[0:1], gen(c_s, s_s))
        assert torch.equal(style_rows[2:3], gen(c_s, s_t))
        assert torch.equal(style_rows[1:2], gen(c_s, 0.5 * s_s + 0.5 * s_t))  # the lerp formula, C untouched
        content_rows = inf.interpolate(enc, gen, src, tgt, alphas, "content")
        assert torch.equal(content_rows[0:1], gen(c_s, s_s))
        assert torch.equal(content_rows[2:3], gen(c_t, s_s))
        both = inf.interpolate(enc, gen, src, tgt, alphas, "both")
        assert torch.equal(both[2:3], gen(c_t, s_t))


# ---- image level API and CLI


@pytest.fixture()
def model_folder(nets, tmp_path):
    enc, gen = nets
    return inf.save_model(tmp_path / "model", enc, gen, {"preset": "test"})


@pytest.fixture()
def images(tmp_path):
    rs = np.random.RandomState(0)
    paths = {}
    for name, size in (("content", (48, 40)), ("style", (30, 50)), ("style2", (64, 64))):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rs.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(paths[name])
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[8:32, 10:30] = 255
    paths["mask"] = tmp_path / "mask.png"
    Image.fromarray(mask).save(paths["mask"])
    paths["empty"] = tmp_path / "empty.png"
    Image.fromarray(np.zeros((40, 48), dtype=np.uint8)).save(paths["empty"])
    return paths


def test_stylizer_api(model_folder, images):
    from styleforge import RegionStylizer

    stylizer = RegionStylizer.from_pretrained(model_folder).to("cpu")
    out = stylizer(images["content"], style=images["style"], mask=images["mask"], output_size="working", paste_back=False).images[0]
    assert out.mode == "RGB" and min(out.size) == 32  # the model works with the shorter side at the training size
    assert out.size == stylizer.working_size(48, 40)
    assert stylizer(images["content"], style=images["style"], mask=images["mask"]).images[0].size == (48, 40)  # default: native
    working = dict(output_size="working", paste_back=False)
    again = stylizer(images["content"], style=images["style"], mask=images["mask"], **working).images[0]
    assert np.array_equal(np.asarray(out), np.asarray(again))  # deterministic
    rec = stylizer.reconstruct(images["content"])
    zero = stylizer(images["content"], style=images["style"], mask=images["mask"], strength=0.0, **working).images[0]
    assert not np.array_equal(np.asarray(zero), np.asarray(out))
    glob = stylizer(images["content"], style=images["style"], **working).images[0]
    assert glob.size == rec.size
    two = stylizer(images["content"], style=[images["style"], images["style2"]], mask=[images["mask"], images["mask"]],
                   **working).images[0]
    assert two.size == out.size
    with pytest.raises(InputError):
        stylizer(images["content"], style=[images["style"], images["style2"]], mask=[images["mask"]])
    frames = stylizer.interpolate(images["content"], images["style2"], alphas=(0, 1), what="both", output_size="working")
    assert len(frames) == 2 and frames[0].size == out.size
    resaved = stylizer.save_pretrained(model_folder.parent / "copy")
    copy = RegionStylizer.from_pretrained(resaved).to("cpu")
    assert np.array_equal(np.asarray(copy(images["content"], style=images["style"], mask=images["mask"], **working).images[0]),
                          np.asarray(out))


def test_cli_apply_writes_result_strip_and_metadata(model_folder, images, tmp_path):
    out = tmp_path / "out.png"
    argv = ["region", "apply", "--model", str(model_folder), "--content", str(images["content"]),
            "--style", str(images["style"]), "--mask", str(images["mask"]), "-o", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert out.exists() and (tmp_path / "out.strip.png").exists()
    meta = read_metadata(out)
    assert meta["method"] == "region" and meta["strength"] == 1.0
    assert main(argv) == 2  # exists, no --overwrite
    assert main(argv + ["--overwrite", "--strength", "0.5", "--paste-back", "--output-size", "working"]) == 0
    assert read_metadata(out)["paste_margin"] == 4  # one feature cell of the test preset (2 downsamplings)
    # with paste-back the pixels outside the mask are exactly the (resized) content image's
    from styleforge.io import load_mask

    stylizer = inf.RegionStylizer.from_pretrained(model_folder).to("cpu")
    content = np.asarray(stylizer.prepare_content(images["content"]))
    result = np.asarray(Image.open(out).convert("RGB"))
    outside = load_mask(images["mask"], size=content.shape[:2])[0, 0].numpy() == 0
    assert np.array_equal(result[outside], content[outside])
    assert not np.array_equal(result[~outside], content[~outside])
    two = tmp_path / "two.png"
    assert main(argv[:-4] + ["--style", str(images["style2"]), "--mask", str(images["mask"]), "-o", str(two), "--device", "cpu"]) == 0
    glob = tmp_path / "global.png"
    assert main(["region", "apply", "--model", str(model_folder), "--content", str(images["content"]),
                 "--style", str(images["style"]), "-o", str(glob), "--device", "cpu", "--strip", "false"]) == 0
    assert glob.exists() and not (tmp_path / "global.strip.png").exists()


def test_cli_apply_refuses_bad_inputs(model_folder, images, tmp_path, capsys):
    base = ["region", "apply", "--model", str(model_folder), "--content", str(images["content"]), "--device", "cpu"]
    assert main(base + ["--style", str(images["style"]), "--mask", str(images["empty"]), "-o", str(tmp_path / "a.png")]) == 2
    assert main(base + ["--style", str(images["style"]), "--style", str(images["style2"]), "--mask", str(images["mask"]),
                        "-o", str(tmp_path / "b.png")]) == 2
    assert main(base + ["--style", str(images["style"]), "--strength", "2", "-o", str(tmp_path / "c.png")]) == 2
    assert main(base + ["--style", str(tmp_path / "missing.png"), "-o", str(tmp_path / "d.png")]) == 2
    assert main(["region", "apply", "--model", str(tmp_path / "nope"), "--content", str(images["content"]),
                 "--style", str(images["style"]), "-o", str(tmp_path / "e.png")]) == 2
    assert main(base + ["--style", str(images["style"]), "-o", str(images["content"]), "--overwrite"]) == 2  # an input
    err = capsys.readouterr().err
    assert all(line.startswith("styleforge: error:") for line in err.strip().splitlines())
    assert not any((tmp_path / f"{c}.png").exists() for c in "abcde")


def test_cli_interpolate(model_folder, images, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["region", "interpolate", "--model", str(model_folder), "--source", str(images["content"]),
                 "--target", str(images["style2"]), "--steps", "4", "-o", str(out), "--device", "cpu"]) == 0
    grid = Image.open(out)
    stylizer = inf.RegionStylizer.from_pretrained(model_folder).to("cpu")
    w, h = stylizer.working_size(48, 40)
    assert grid.size == (4 * 48, 3 * 40)  # rows: content, style, both; frames at the source's own size
    assert main(["region", "interpolate", "--model", str(model_folder), "--source", str(images["content"]), "--target",
                 str(images["style2"]), "--steps", "2", "-o", str(out), "--device", "cpu", "--overwrite",
                 "--output-size", "working"]) == 0
    assert Image.open(out).size == (2 * w, 3 * h)
