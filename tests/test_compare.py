"""``styleforge compare``: the method registry, pair loading, one seed policy, the report files, and the CLI end
to end with the region stylizer (tiny test preset) and randomly initialised metric networks."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge import compare as C
from styleforge.cli.main import main
from styleforge.errors import InputError, OutputError
from styleforge.metrics.suite import MetricSuite

FAST_METRICS = ["ssim", "psnr", "lpips", "gram"]


def _write(path: Path, seed: int, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def pairs_folder(tmp_path):
    root = tmp_path / "pairs"
    for i, stem in enumerate(("cat", "house", "tree")):
        _write(root / "content" / f"{stem}.png", i)
        _write(root / "reference" / f"{stem}.jpg", 10 + i, size=(36, 36))
    return root


@pytest.fixture()
def fake_methods():
    """Two deterministic fake methods that record every call."""
    calls = []

    def blend(content, reference, out, seed, size, options):
        a = np.asarray(Image.open(content).convert("RGB"), np.float32)
        b = np.asarray(Image.open(reference).convert("RGB"), np.float32)
        noise = np.random.default_rng(seed).normal(0, 5, a.shape)
        w = float(options.get("weight", 0.5))
        Image.fromarray(np.clip((1 - w) * a + w * b + noise, 0, 255).astype(np.uint8)).save(out)
        calls.append(("blend", Path(content), Path(reference), seed, size, dict(options)))

    def copy_content(content, reference, out, seed, size, options):
        Image.open(content).save(out)
        calls.append(("copy", Path(content), Path(reference), seed, size, dict(options)))

    C.register_method("test-blend", blend)
    C.register_method("test-copy", copy_content, description="returns the content")
    yield calls
    C.unregister_method("test-blend")
    C.unregister_method("test-copy")


@pytest.fixture()
def random_suite():
    return MetricSuite(mode="random")


# ---- registry and inputs


def test_registry_holds_the_region_stylizer_and_refuses_unknown_or_duplicate_names(fake_methods):
    assert "region" in C.available_methods() and "test-copy" in C.available_methods()
    assert C.get_method("test-copy").description == "returns the content"
    with pytest.raises(InputError, match="registered methods: .*region"):
        C.get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        C.register_method("test-copy", lambda *a: None)
    with pytest.raises(ValueError):
        C.register_method("bad name!", lambda *a: None)


def test_pairs_from_a_folder_match_by_stem(pairs_folder):
    pairs = C.load_pairs(pairs_folder)
    assert [(p.content.stem, p.reference.stem) for p in pairs] == [("cat", "cat"), ("house", "house"), ("tree", "tree")]
    assert [p.name for p in pairs] == ["000_cat", "001_house", "002_tree"]


def test_pairs_from_a_folder_by_order_and_mismatched_counts(tmp_path):
    for i in range(2):
        _write(tmp_path / "p" / "content" / f"c{i}.png", i)
        _write(tmp_path / "p" / "style" / f"s{i}.png", i + 5)
    assert [p.reference.name for p in C.load_pairs(tmp_path / "p")] == ["s0.png", "s1.png"]
    _write(tmp_path / "p" / "style" / "s2.png", 9)
    with pytest.raises(InputError, match="equal numbers"):
        C.load_pairs(tmp_path / "p")


def test_pairs_from_a_list_file(tmp_path, pairs_folder):
    listing = tmp_path / "pairs.txt"
    listing.write_text("# content reference\n"
                       "pairs/content/cat.png\tpairs/reference/tree.jpg\n\n"
                       f"{pairs_folder / 'content' / 'tree.png'}, pairs/reference/cat.jpg  # absolute + relative\n")
    pairs = C.load_pairs(listing)
    assert [(p.content.stem, p.reference.stem) for p in pairs] == [("cat", "tree"), ("tree", "cat")]
    listing.write_text("only-one-path.png\n")
    with pytest.raises(InputError, match="expected 'content reference'"):
        C.load_pairs(listing)


# ---- running and reporting


def test_every_method_gets_the_same_inputs_size_and_seed(tmp_path, pairs_folder, fake_methods, random_suite):
    report = C.compare(pairs_folder, tmp_path / "out", methods=["test-blend", "test-copy"], seed=7, size=32,
                       options={"test-blend": {"weight": 0.25}}, shared_options={"device": "cpu"},
                       metrics=[], suite=random_suite, progress=False)
    by_method = {m: [c[1:5] for c in fake_methods if c[0] == m] for m in ("blend", "copy")}
    assert by_method["blend"] == by_method["copy"]  # same prepared files, seeds and size, in the same order
    assert {c[3] for c in fake_methods} == {7} and {c[4] for c in fake_methods} == {32}
    for content, reference, *_ in by_method["blend"]:
        assert content.parent == tmp_path / "out" / "inputs"
        assert Image.open(content).size == Image.open(reference).size == (32, 32)
    assert [c[5] for c in fake_methods if c[0] == "blend"][0] == {"device": "cpu", "weight": 0.25}
    assert [c[5] for c in fake_methods if c[0] == "copy"][0] == {"device": "cpu"}
    assert report.seeds == [7, 7, 7]


def test_per_pair_seed_policy(tmp_path, pairs_folder, fake_methods, random_suite):
    C.compare(pairs_folder, tmp_path / "out", methods=["test-blend", "test-copy"], seed=3, seed_policy="per-pair",
              size=32, metrics=[], suite=random_suite, progress=False)
    assert [c[3] for c in fake_methods if c[0] == "blend"] == [3, 4, 5]
    assert [c[3] for c in fake_methods if c[0] == "copy"] == [3, 4, 5]


def test_report_files_grid_tables_and_metrics(tmp_path, pairs_folder, fake_methods, random_suite):
    made = tmp_path / "made"
    for i, stem in enumerate(("cat", "house", "tree")):
        _write(made / f"{stem}.png", 30 + i, size=(64, 64))  # already made outputs, named after the content
    out = tmp_path / "out"
    report = C.compare(pairs_folder, out, methods=["test-copy", "test-blend"], outputs={"external": made}, size=32,
                       metrics=FAST_METRICS, suite=random_suite, progress=False)
    assert report.columns == ["test-copy", "test-blend", "external"]
    grid = Image.open(out / "grid.png")
    gap = C.GRID_GAP
    assert grid.size == (5 * 32 + 4 * gap, 18 + 3 * 32 + 2 * gap)  # content, reference + 3 methods; a header + 3 pairs

    def cell(i, j):
        x, y = j * (32 + gap), 18 + i * (32 + gap)
        return np.asarray(grid.convert("RGB").crop((x, y, x + 32, y + 32)))

    for i in range(3):  # rows are pairs, columns methods: the copy method's column repeats the content column
        assert np.array_equal(cell(i, 0), cell(i, 2)) and not np.array_equal(cell(i, 0), cell(i, 1))
    assert not np.array_equal(cell(0, 0), cell(1, 0))
    # the copy method returns the prepared content: identical images give SSIM 1, PSNR inf, LPIPS 0
    copy = report.metrics["test-copy"]
    assert copy["ssim"]["value"] == pytest.approx(1.0) and copy["psnr"]["value"] == float("inf")
    assert copy["lpips"]["value"] == 0.0 and len(copy["lpips"]["values"]) == 3
    assert report.metrics["test-blend"]["ssim"]["value"] < 1 and report.metrics["external"]["lpips"]["value"] > 0
    md = (out / "report.md").read_text()
    assert "| method | SSIM ↑ | PSNR (dB) ↑ | LPIPS-Alex ↓ | Gram (VGG19) ↓ |" in md
    assert re.search(r"\| test-copy \| 1 \| ∞ \| 0 \|", md)
    assert "randomly initialised" in md and "![comparison grid](grid.png)" in md
    assert "(outputs/test-blend/001_house.png)" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 3 * 5  # the grid + every cell
    assert "<th>external</th>" in page and "src=\"grid.png\"" not in page  # self-contained
    data = json.loads((out / "metrics.json").read_text())
    assert data["metrics"]["test-copy"]["psnr"]["value"] == "inf" and data["size"] == 32
    assert data["outputs"]["external"][0].endswith("made/cat.png")


def test_a_failing_pair_is_reported_and_the_rest_kept(tmp_path, pairs_folder, random_suite):
    def flaky(content, reference, out, seed, size, options):
        if "house" in Path(content).name:
            raise InputError("cannot stylize this one")
        Image.open(content).save(out)

    C.register_method("test-flaky", flaky)
    try:
        report = C.compare(pairs_folder, tmp_path / "out", methods=["test-flaky"], size=32, metrics=["psnr"],
                           suite=random_suite, progress=False)
    finally:
        C.unregister_method("test-flaky")
    cells = report.cells["test-flaky"]
    assert cells[1].path is None and "cannot stylize" in cells[1].error and cells[0].path and cells[2].path
    assert report.metrics["test-flaky"]["psnr"]["values"][1] != report.metrics["test-flaky"]["psnr"]["values"][1]  # NaN
    assert "test-flaky failed on 001_house: cannot stylize this one" in (tmp_path / "out" / "report.md").read_text()


def test_an_existing_report_is_kept_unless_overwrite(tmp_path, pairs_folder, fake_methods, random_suite):
    kw = dict(methods=["test-copy"], size=32, metrics=[], suite=random_suite, progress=False)
    C.compare(pairs_folder, tmp_path / "out", **kw)
    before = (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(OutputError, match="--overwrite"):
        C.compare(pairs_folder, tmp_path / "out", **kw)
    C.compare(pairs_folder, tmp_path / "out", overwrite=True, **kw)
    assert (tmp_path / "out" / "report.md").read_text() == before
    assert sorted(p.name for p in (pairs_folder / "content").iterdir()) == ["cat.png", "house.png", "tree.png"]


def test_metrics_without_weights_are_listed_as_missing(tmp_path, pairs_folder, fake_methods, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv("STYLEFORGE_METRIC_WEIGHTS", raising=False)
    report = C.compare(pairs_folder, tmp_path / "out", methods=["test-copy"], size=32, metrics=["psnr", "gram"],
                       suite=MetricSuite(offline=True), progress=False)
    assert "psnr" in report.metrics["test-copy"] and "gram" not in report.metrics["test-copy"]
    assert "vgg19-dcbb9e9d.pth" in report.metric_notes["gram"]
    assert "`gram` not computed" in (tmp_path / "out" / "report.md").read_text()


def test_bad_requests_fail_before_any_work(tmp_path, pairs_folder, fake_methods):
    with pytest.raises(InputError, match="nothing to compare"):
        C.compare(pairs_folder, tmp_path / "o")
    with pytest.raises(InputError, match="unknown metric"):
        C.compare(pairs_folder, tmp_path / "o", methods=["test-copy"], metrics=["nope"])
    with pytest.raises(InputError, match="no output found"):
        (tmp_path / "few").mkdir()
        _write(tmp_path / "few" / "cat.png", 1)
        C.compare(pairs_folder, tmp_path / "o", outputs={"few": tmp_path / "few"})
    assert not (tmp_path / "o").exists()


# ---- CLI end to end with the region stylizer


@pytest.fixture(scope="module")
def tiny_region_model(tmp_path_factory):
    from styleforge.region.inference import save_model
    from styleforge.region.model import build_models
    from styleforge.region.presets import get_preset

    torch.manual_seed(0)
    nets = build_models(get_preset("test"))
    return save_model(tmp_path_factory.mktemp("region") / "model", nets["encoder"], nets["generator"], {"image_size": 32})


def test_cli_compare_end_to_end(tmp_path, pairs_folder, tiny_region_model, capsys):
    made = tmp_path / "made"
    for i in range(3):
        _write(made / f"{i:03d}_anything.png", 40 + i)
    out = tmp_path / "report"
    code = main(["compare", str(pairs_folder), "-o", str(out), "--methods", "region", "--outputs", f"other={made}",
                 "--method-option", f"region.model={tiny_region_model}", "--method-option", "region.strength=0.5",
                 "--size", "32", "--seed", "1", "--metric-nets", "random",
                 "--metrics", "ssim,psnr,lpips,gram,structure,dreamsim,artfid", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for name in ("grid.png", "report.md", "report.html", "metrics.json"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed
    assert len(list((out / "outputs" / "region").glob("*.png"))) == 3
    assert Image.open(out / "grid.png").size == (4 * 32 + 3 * C.GRID_GAP, 18 + 3 * 32 + 2 * C.GRID_GAP)
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["metrics"]["region"]) == {"ssim", "psnr", "lpips", "gram", "structure", "dreamsim", "artfid"}
    assert data["metrics"]["other"]["artfid"]["n"] == 3 and data["metric_networks"] == "random"
    assert data["metrics"]["region"]["artfid"]["value"] > 1  # (1 + LPIPS > 0) · (1 + FID > 0)
    md = (out / "report.md").read_text()
    assert "| region |" in md and "| other |" in md and "ArtFID ↓" in md and "FID / ArtFID from 3 images" in md


def test_cli_list_methods_and_one_line_errors(tmp_path, pairs_folder, capsys, monkeypatch):
    assert main(["compare", "--list-methods"]) == 0
    assert re.search(r"^region\t", capsys.readouterr().out, re.M)
    code = main(["compare", str(pairs_folder), "-o", str(tmp_path / "r"), "--methods", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown method 'nope'" in err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("STYLEFORGE_METRIC_WEIGHTS", raising=False)
    a = pairs_folder / "content" / "cat.png"
    code = main(["metrics", "gram", str(a), str(a), "--offline"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "vgg19-dcbb9e9d.pth" in err


def test_cli_metrics_on_images_and_folders(pairs_folder, capsys):
    a = pairs_folder / "content" / "cat.png"
    assert main(["metrics", "psnr", str(a), str(a)]) == 0
    assert capsys.readouterr().out.startswith("psnr\tinf\t")
    assert main(["metrics", "ssim", str(pairs_folder / "content"), str(pairs_folder / "content")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("ssim\tmean\t1\t")


def _alexnet_lpips_files(folder: Path) -> Path:
    """Files with the published names and layouts (constant values, stored as cheap broadcast views)."""
    from styleforge.metrics.nets.vgg import AlexNet

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        layout = {k: v.shape for k, v in AlexNet(classifier=True).state_dict().items()}
    torch.save({k: torch.full((1,) * len(s), 0.01).expand(s) for k, s in layout.items()}, folder / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{k}.model.1.weight": torch.full((1, c, 1, 1), 0.1) for k, c in enumerate((64, 192, 384, 256, 256))},
               folder / "alex.pth")
    return folder


def test_pretrained_metrics_come_from_a_weights_folder_and_missing_ones_are_noted(tmp_path, pairs_folder, fake_methods,
                                                                                   monkeypatch, capsys):
    weights = _alexnet_lpips_files(tmp_path / "weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    out = tmp_path / "report"
    code = main(["compare", str(pairs_folder), "-o", str(out), "--methods", "test-blend", "--size", "32",
                 "--metrics", "psnr,lpips,gram", "--weights-dir", str(weights), "--offline"])
    assert code == 0, capsys.readouterr().err
    assert "note: gram not computed" in capsys.readouterr().out
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["metrics"]["test-blend"]) == {"psnr", "lpips"} and data["metric_networks"] == "pretrained"
    assert "vgg19-dcbb9e9d.pth" in data["metric_notes"]["gram"]


def test_cli_background_lpips_with_published_format_weights(tmp_path, pairs_folder, capsys):
    weights = _alexnet_lpips_files(tmp_path / "weights")
    a = pairs_folder / "content" / "cat.png"
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 12)).resize((40, 48)).save(mask)
    assert main(["metrics", "lpips", str(a), str(a), "--weights", f"alexnet={weights}", "--weights",
                 f"lpips-alex={weights / 'alex.pth'}", "--mask", str(mask), "--mask-mode", "masked"]) == 0
    assert capsys.readouterr().out.startswith("lpips\t0\t")


def test_compare_runs_cross_image_attention_on_a_tiny_model(tmp_path, pairs_folder, tiny_sd1_folder, capsys):
    out = tmp_path / "report"
    opts = [f"model={tiny_sd1_folder}", "num_inference_steps=10", "skip_steps=2", "adain=full", "domain=animal"]
    args = ["compare", str(pairs_folder), "-o", str(out), "--methods", "cross-image", "--size", "32", "--seed", "5",
            "--metric-nets", "random", "--metrics", "ssim,psnr", "--device", "cpu"]
    for o in opts:
        args += ["--method-option", f"cross-image.{o}"]
    assert main(args) == 0, capsys.readouterr().err
    made = sorted((out / "outputs" / "cross-image").glob("*.png"))
    assert len(made) == 3
    from styleforge.io import read_metadata

    meta = read_metadata(made[0])
    assert meta["method"] == "cross-image-attention" and meta["params"]["seed"] == 5
    assert meta["params"]["num_inference_steps"] == 10


def test_without_a_size_every_method_works_at_its_native_size(tmp_path, pairs_folder, fake_methods, random_suite):
    report = C.compare(pairs_folder, tmp_path / "out", methods=["test-copy"], metrics=["psnr"], suite=random_suite,
                       progress=False)
    assert {call[4] for call in fake_methods} == {None}  # no common size imposed
    content, reference = report.inputs[0]
    assert Image.open(content).size == (40, 48) and Image.open(reference).size == (36, 36)  # inputs not cropped
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["size"] is None and data["metric_size"] == 256 and data["metrics"]["test-copy"]["psnr"]["value"] == "inf"
    assert "native working size" in (tmp_path / "out" / "report.md").read_text()
