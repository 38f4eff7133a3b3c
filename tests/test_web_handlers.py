"""The web page's handlers without a browser: controls generated from the parsers, runs, messages, cancel, cleanup."""

from __future__ import annotations

import shlex
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleforge import options
from styleforge.cli.main import build_parser
from styleforge.errors import InputError, StyleforgeError
from styleforge.io import read_metadata
from styleforge.web import handlers as H

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE, ASTRONAUT = (str(ROOT / "examples" / n) for n in ("content_landscape.png", "style_coffee.png",
                                                                   "style_astronaut.png"))
REGION_MAIN = ("content", "style", "mask", "strength", "paste_back", "seed")


def painted_layer(size, box) -> Image.Image:
    """An editor layer: transparent, with an opaque painted rectangle."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    return layer


def test_advanced_controls_come_from_the_parser():
    controls = {o.dest: o for o in H.advanced_options("region", REGION_MAIN)}
    assert not set(REGION_MAIN) & set(controls) and not {"output", "overwrite", "device", "dtype"} & set(controls)
    kinds = {dest: H.control_kind(o) for dest, o in controls.items()}
    assert kinds["composition"] == "dropdown" and kinds["feather"] == "number" and kinds["save_strip"] == "checkbox" and kinds["output_size"] == "dropdown"
    assert kinds["paste_margin"] == "text" and controls["paste_margin"].default is None  # empty = not given
    assert controls["composition"].choices == ("feature", "pixel", "content_code")
    # a flag the command gains appears on the page without page code
    parser_dests = {o.dest for o in options.method_options("appearance")}
    page = {o.dest for o in H.advanced_options("appearance", ())}
    assert page == parser_dests - set(H.PAGE_OPTIONS) - {"help"}
    assert "save_log" not in {o.dest for o in H.advanced_options("translate", ())}  # files the page cannot offer


@pytest.mark.parametrize("command", ["region", "appearance", "translate", "pair", "oneshot", "pair-train", "compare"])
def test_controls_left_at_their_defaults_add_no_flag(command):
    controls = H.advanced_options(command, ())
    values = H.values_from_controls(command, controls, [H.shown_default(o) for o in controls])
    assert values == {}


def test_changed_controls_parse_like_the_command_line():
    controls = H.advanced_options("appearance", ())
    by_dest = {o.dest: i for i, o in enumerate(controls)}
    raws = [H.shown_default(o) for o in controls]
    raws[by_dest["swap_range_full"]] = "5,80"
    raws[by_dest["contrast_strength"]] = 2.5
    raws[by_dest["skip_steps"]] = 10.0  # number boxes give floats
    raws[by_dest["contrast_clip"]] = False
    raws[by_dest["adain"]] = "full"
    raws[by_dest["exact_reconstruction"]] = True
    values = H.values_from_controls("appearance", controls, raws)
    assert values == {"swap_range_full": "5,80", "contrast_strength": 2.5, "skip_steps": 10, "contrast_clip": False,
                      "adain": "full", "exact_reconstruction": True}
    full = {**values, "structure": "s.png", "appearance": "a.png", "domain": "animal", "output": "o.png"}
    args = options.make_args("appearance", full)
    expected = build_parser().parse_args(shlex.split(options.command_line("appearance", full))[1:])
    assert args.swap_range_full == expected.swap_range_full == (5, 80) and args.skip_steps == 10
    assert args.contrast_clip is False and args.exact_reconstruction is True


def test_bad_control_values_are_one_line_refusals():
    opt = next(o for o in options.method_options("region") if o.dest == "lift_radius")
    with pytest.raises(InputError, match="--lift-radius expects a whole number"):
        H.value_from_control(opt, 2.5)
    with pytest.raises(InputError, match="--lift-radius expects a number"):
        H.value_from_control(opt, "wide")
    margin = next(o for o in options.method_options("region") if o.dest == "paste_margin")  # a text box: the parser refuses
    with pytest.raises(InputError, match="--paste-margin"):
        options.make_args("region", {"content": "a.png", "style": "s.png", "output": "o.png",
                                     "paste_margin": H.value_from_control(margin, "wide")})
    pair = next(o for o in options.method_options("appearance") if o.dest == "adain_range")
    with pytest.raises(InputError, match="--adain-range"):
        options.make_args("appearance", {"structure": "s", "appearance": "a", "output": "o",
                                         "adain_range": H.value_from_control(pair, "20-100")})


def test_region_run_writes_the_commands_png_and_shows_its_command(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    mask = H.mask_from_layer(painted_layer(Image.open(CONTENT).size, (60, 170, 300, 240)))
    mask_path = H.save_mask(mask, job, "mask1")
    names = H.upload_names([STYLE])
    result = H.region(job, H.ServerSettings(), CONTENT, [STYLE, None, None], [mask_path, None, None], 0.5, True, 0,
                      {"size": 64}, names)
    main, strip = result.files
    assert Path(main).name == "result.png" and Path(strip).name == "result.strip.png"
    assert result.images[0] == (main, "result") and result.images[1][1] == "strip"
    meta = read_metadata(main)
    assert meta == result.settings and meta["method"] == "region" and meta["strength"] == 0.5 and meta["paste_back"]
    assert result.command == ("styleforge region apply --content=" + CONTENT + " --style style_coffee.png --size=64 --mask "
                              "mask1.png --strength=0.5 --output=result.png")
    # the same line on the command line writes the same pixels
    from styleforge.cli.main import main as cli

    line = shlex.split(result.command.replace("style_coffee.png", STYLE).replace("mask1.png", mask_path))[1:]
    assert cli([a.replace("result.png", str(tmp_path / "cli.png")) for a in line]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(Image.open(main)))


@pytest.mark.parametrize("styles, masks, extra, message", [
    ([None], [None], {}, "give at least one style image"),
    ([None, STYLE], ["m.png", None], {}, "edit 1 has a mask but no style image"),
    ([STYLE, ASTRONAUT], ["m.png", None], {}, "edit 2 has no mask"),
    ([STYLE], [None], {"composition": "mix"}, "--composition"),
    ([STYLE], [None], {"feather": "-"}, "--feather"),
])
def test_region_refusals(tmp_path, styles, masks, extra, message):
    with pytest.raises(InputError, match=message):
        H.region(tmp_path, H.ServerSettings(), CONTENT, styles, masks, 1.0, False, 0, extra)
    assert not (tmp_path / "out" / "result.png").exists()


def test_the_commands_own_refusals_reach_the_page(tmp_path):
    empty = H.save_mask(Image.new("L", (64, 64), 0), tmp_path, "empty")
    with pytest.raises(InputError) as e:
        H.region(tmp_path, H.ServerSettings(), CONTENT, [STYLE], [empty], 1.0, False, 0, {"size": 64})
    assert "empty" in H.error_message(e.value)
    with pytest.raises(InputError, match=r"--strength: must be a finite number in \[0, 1\]"):
        H.region(tmp_path, H.ServerSettings(), CONTENT, [STYLE], [None], 1.5, False, 0, {"size": 64})
    bad = tmp_path / "upload-cache-1234" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    with pytest.raises(InputError) as e:
        H.region(tmp_path, H.ServerSettings(), CONTENT, [str(bad)], [None], 1.0, False, 0, {"size": 64})
    text = H.error_message(e.value, H.upload_names([str(bad)]))
    assert text == "not an image file (or an unsupported format): broken.png"


def test_missing_model_is_the_cli_message(tmp_path):
    server = H.ServerSettings(model=str(tmp_path / "no-such-model"), offline=True)
    with pytest.raises(StyleforgeError) as e:
        H.appearance(tmp_path, server, CONTENT, STYLE, None, None, "animal", "", "", 42, 10, {})
    assert "no-such-model" in H.error_message(e.value) and "\n" not in H.error_message(e.value)


def test_unexpected_errors_are_one_line_and_logged(caplog):
    try:
        raise ZeroDivisionError("division by zero\nsecond line")
    except ZeroDivisionError as e:
        text = H.error_message(e)
    assert text == "unexpected error: ZeroDivisionError: division by zero second line (details in the server log)"
    assert "Traceback" in caplog.text or caplog.records[0].exc_info


def test_mask_from_layer():
    assert H.mask_from_layer(Image.new("RGBA", (8, 8), (255, 0, 0, 0))) is None  # nothing painted
    mask = H.mask_from_layer(painted_layer((8, 8), (2, 2, 4, 6)))
    arr = np.asarray(mask)
    assert mask.mode == "L" and arr.sum() == 255 * 8 and arr[3, 3] == 255 and arr[0, 0] == 0


def test_compare_gives_the_grid_and_a_table(tmp_path):
    result = H.compare(tmp_path, H.ServerSettings(), [CONTENT], [STYLE], ["region"], 64, 0,
                       {"metrics": "ssim,psnr"}, H.upload_names([CONTENT, STYLE]))
    assert Path(result.images[0][0]).name == "grid.png" and result.images[0][1] == "grid"
    assert [Path(f).name for f in result.files] == ["grid.png", "report.html", "metrics.json"]
    assert result.headers == ["method", "psnr", "ssim"] and result.table[0][0] == "region"
    assert all(isinstance(v, float) for v in result.table[0][1:])
    assert "pairs.txt" in result.command and "--methods=region" in result.command
    with pytest.raises(InputError, match="as many reference images"):
        H.compare(tmp_path, H.ServerSettings(), [CONTENT, CONTENT], [STYLE], ["region"], 64, 0, {})


def test_server_settings_apply_where_they_belong():
    s = H.ServerSettings(model="tiny/", region_model="region/", device="cpu", dtype="bf16", offline=True)
    assert s.values_for("appearance") == {"model": "tiny/", "device": "cpu", "dtype": "bf16", "offline": True}
    assert s.values_for("region")["model"] == "region/" and "model" not in s.values_for("pair")
    assert "model" not in s.values_for("compare")
    assert H.ServerSettings().values_for("translate") == {}


def test_one_job_at_a_time_and_cancel_only_your_own():
    runner = H.JobRunner()
    inside, overlap, stopped = [], [], []

    def work(session, cancel_after=None):
        with runner.job(session):
            inside.append(session)
            overlap.append(len(inside))
            try:
                for step in range(50):
                    if cancel_after == step:
                        assert not runner.cancel("someone else") and runner.cancel(session)
                    runner.check()
                    time.sleep(0.002)
            except H.Cancelled:
                stopped.append(session)
            finally:
                inside.remove(session)

    threads = [threading.Thread(target=work, args=("a",)), threading.Thread(target=work, args=("b", 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlap) == 1 and stopped == ["b"] and not runner.busy
    runner.check()  # nothing running: no effect


def test_workspace_keeps_few_jobs_and_removes_a_closed_session(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "mine.txt").write_text("not the page's")
    ws = H.Workspace(tmp_path / "root", keep_jobs=2)
    jobs = [ws.new_job("s1", "region") for _ in range(4)]
    assert [j.exists() for j in jobs] == [False, False, True, True]
    style = ws.new_folder("s1", "styles", "water colour")
    style.mkdir()
    (style / "style.safetensors").write_bytes(b"")
    assert ws.new_folder("s1", "styles", "water colour").name == "water_colour-2" and ws.styles("s1") == [style]
    assert ws.styles("s2") == []
    ws.end_session("s1")
    assert not (ws.root / "s1").exists() and ws.root.is_dir()
    ws.close()
    assert not ws.root.exists() and (tmp_path / "root" / "mine.txt").is_file()


def test_zip_folder_leaves_checkpoints_out(tmp_path):
    import zipfile

    folder = tmp_path / "mystyle"
    (folder / "checkpoints" / "c1").mkdir(parents=True)
    (folder / "checkpoints" / "c1" / "x.bin").write_bytes(b"x")
    (folder / "style.safetensors").write_bytes(b"w")
    (folder / "style.json").write_text("{}")
    names = zipfile.ZipFile(H.zip_folder(folder, tmp_path / "s.zip", skip=("checkpoints",))).namelist()
    assert sorted(names) == ["mystyle/style.json", "mystyle/style.safetensors"]


# ------------------------------------------------------------------------- the gradio side (no browser)


def test_unreadable_upload_is_refused_with_the_loaders_message(tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import FileData

    from styleforge.web.app import image_input

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"GIF89a but not really")
    with gr.Blocks():
        image = image_input("Style 1")
    with pytest.raises(gr.Error) as e:
        image.preprocess(FileData(path=str(bad), orig_name="broken.png"))
    assert e.value.message == "Style 1: not an image file (or an unsupported format): broken.png"


def test_cancel_reaches_the_progress_loop():
    gr = pytest.importorskip("gradio")
    from styleforge.web.app import App

    app = App(H.ServerSettings(), H.Workspace())
    try:
        progress = gr.Progress()
        with app.runner.job("me"):
            progress.update(1)  # not cancelled: a plain step
            app.runner.cancel("me")
            with pytest.raises(H.Cancelled):
                progress.update(1)
    finally:
        app.workspace.close()


def test_serve_without_gradio_says_how_to_get_it(monkeypatch, capsys):
    import sys

    from styleforge.cli.main import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve"]) == 2
    assert "pip install 'styleforge[web]'" in capsys.readouterr().err


def test_serve_warns_when_it_binds_beyond_this_machine(monkeypatch, capsys, tmp_path):
    pytest.importorskip("gradio")
    import styleforge.web.app as web_app
    from styleforge.cli.main import main

    launched = {}
    monkeypatch.setattr(web_app, "build_app", lambda server, workspace: (None, None))
    monkeypatch.setattr(web_app, "launch", lambda page, app, **kw: launched.update(kw))
    assert main(["serve", "--host", "0.0.0.0", "--port", "9999", "--workdir", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err
    assert "warning: binding 0.0.0.0" in err and launched["host"] == "0.0.0.0" and launched["port"] == 9999
    assert list((tmp_path / "w").iterdir()) == []  # the session files go with the server, only they
    assert main(["serve", "--workdir", str(tmp_path / "w")]) == 0
    assert "warning" not in capsys.readouterr().err and launched["host"] == "127.0.0.1" and not launched["share"]


def test_pair_train_then_apply_the_sessions_style(tmp_path, tiny_sd1_folder):
    """The Pair tab's two halves: train into the session's styles folder (zip offered), then apply that style."""
    ws = H.Workspace(tmp_path / "ws")
    server = H.ServerSettings(model=str(tiny_sd1_folder))
    style_dir = ws.new_folder("s", "styles", "digital illustration")
    extra = {"style_start": 1, "content_rank": 4, "style_rank": 4, "resolution": 32, "lr": 1e-3, "progress": False}
    trained = H.pair_train(ws.new_job("s", "pair-train"), style_dir, server, CONTENT, STYLE, "digital illustration",
                           "scene", 2, 0, extra, H.upload_names([CONTENT, STYLE]))
    assert ws.styles("s") == [style_dir] and Path(trained.files[0]).name == "digital_illustration.zip"
    assert trained.settings["iterations_trained"] == 2
    assert trained.command.startswith("styleforge pair train --model=") and "--output=digital_illustration/" in trained.command
    applied = H.pair_apply(ws.new_job("s", "pair-apply"), server, [str(style_dir)], "a photo of a dog", None, "2", 1, 2,
                           {"height": 32, "width": 32}, {str(style_dir): "digital_illustration/"})
    meta = read_metadata(applied.files[0])
    assert meta["method"] == "pair-customization" and meta["params"]["style_scale"] == {"digital_illustration": 2.0}
    assert "--style digital_illustration/" in applied.command and "--style-scale 2" in applied.command
    with pytest.raises(InputError, match="choose a style"):
        H.pair_apply(tmp_path, server, [], "x", None, "3", 0, 2, {})


def test_upload_refusal_names_the_upload(tmp_path):
    bad = tmp_path / "cache" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4)
    assert H.upload_refusal(str(bad), "broken.png", "Style 1").startswith("Style 1: image file is truncated or corrupt: broken.png")
    assert H.upload_refusal(STYLE, "style_coffee.png", "Style 1") is None


def test_oneshot_train_then_apply_the_sessions_run(tmp_path):
    """The One-shot tab's two halves on tiny OSASIS models: train into the session's runs folder, apply it."""
    from styleforge.osasis.tiny import tiny_clip, tiny_models

    models = tiny_models()
    for name in ("diffae", "latent"):
        models[name].save_pretrained(tmp_path / name)
    tiny_clip().save_pretrained(tmp_path / "clip")
    rs = np.random.RandomState(0)
    photos = []
    for name in ("art", "p0", "p1"):
        Image.fromarray(rs.randint(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32)).save(tmp_path / f"{name}.png")
        photos.append(str(tmp_path / f"{name}.png"))
    ws = H.Workspace(tmp_path / "ws")
    run_dir = ws.new_folder("s", "runs", "art")
    extra = {"model": str(tmp_path / "diffae"), "latent": str(tmp_path / "latent"), "clip": str(tmp_path / "clip"),
             "lpips_weight": 0, "batch_size": 2, "latent_steps": 5, "content_steps": 3, "encode_steps": 10,
             "decode_steps": 4, "spn_time_input": "grid_index", "sample_every": 1, "progress": False, "device": "cpu"}
    trained = H.oneshot_train(ws.new_job("s", "oneshot-train"), run_dir, H.ServerSettings(), photos[0], photos[1], 2, 0,
                              extra, H.upload_names(photos))
    assert ws.runs("s") == [run_dir] and trained.settings["iteration"] == 2 and trained.images
    assert trained.command.startswith("styleforge oneshot train --style=art.png --style-photo=p0.png")
    applied = H.oneshot_apply(ws.new_job("s", "oneshot-apply"), H.ServerSettings(), str(run_dir), photos[1:], 0,
                              {"encode_steps": 10, "decode_steps": 4, "device": "cpu"}, {str(run_dir): "art/"})
    assert [Path(p).name for p in applied.files] == ["p0.png", "p1.png"]
    assert read_metadata(applied.files[0])["method"] == "osasis"
    assert "--run=art/" in applied.command and "--input=photos/" in applied.command


def test_appearance_shows_transfer_strip_and_reconstructions(tmp_path, tiny_sd1_folder):
    """The page asks for every side output; a run too short to self-segment has no AdaIN masks and still succeeds."""
    result = H.appearance(tmp_path, H.ServerSettings(model=str(tiny_sd1_folder)), CONTENT, STYLE, None, None, "animal",
                          "", "", 42, 6, {"skip_steps": 2, "cache": False, "size": 32, "save_strip": True,
                                          "save_reconstructions": True, "save_masks": True}, H.upload_names([STYLE]))
    assert [c for _, c in result.images] == ["result", "appearance_recon", "strip", "structure_recon"]
    assert result.settings["method"] == "cross-image-attention" and "--appearance=style_coffee.png" in result.command


def test_numbers_without_a_default_are_empty_text_boxes_that_add_no_flag():
    """--paste-margin / --vae-tile-size default to "not given": an empty box must leave them so (a number box sends 0)."""
    for command, dest in (("region", "paste_margin"), ("translate", "vae_tile_size")):
        option = next(o for o in options.method_options(command) if o.dest == dest)
        assert option.default is None and H.control_kind(option) == "text" and H.shown_default(option) == ""
        assert H.value_from_control(option, "") is None and H.value_from_control(option, None) is None
        assert H.value_from_control(option, " 64 ") == "64"
    margin = next(o for o in options.method_options("region") if o.dest == "paste_margin")
    args = options.make_args("region", {"content": "a.png", "style": "s.png", "output": "o.png",
                                        "paste_margin": H.value_from_control(margin, "")})
    assert args.paste_margin is None


def test_compare_size_left_empty_keeps_each_methods_own_size_and_256_is_passed(tmp_path, monkeypatch):
    """The Compare tab's --size: empty = the command's default (native sizes); any number, 256 included, is passed."""
    seen = []
    monkeypatch.setattr(H, "run_command", lambda command, values, *a, **k: seen.append(values) or (_ for _ in ()).throw(
        InputError("stop")))
    for size in ("", 256):
        with pytest.raises(InputError, match="stop"):
            H.compare(tmp_path, H.ServerSettings(), [CONTENT], [STYLE], ["region"], size, 0, {})
    assert "size" not in seen[0] and seen[1]["size"] == "256"


def test_main_controls_at_the_parsers_default_add_no_flag(monkeypatch):
    """The tabs' own controls compare with the parser's defaults, not with copies of them (appearance seeds 42)."""
    passed = {}
    monkeypatch.setattr(H, "run_command", lambda command, values, *a, **k: passed.setdefault(command, values))
    server = H.ServerSettings()
    H.appearance(Path("job"), server, "s.png", "a.png", None, None, "animal", "", "", 42, 100, {})
    H.translate(Path("job"), server, "i.png", "cat", "dog", "", "", None, None, "", 1.0, 0, 50, {})
    H.pair_apply(Path("job"), server, ["style"], "a dog", None, "3", 0, 50, {})
    for command, values in passed.items():
        assert not {"seed", "num_inference_steps", "steps", "contrastive_weight", "style_scale"} & set(values), command
    passed.clear()
    H.appearance(Path("job"), server, "s.png", "a.png", None, None, "animal", "", "", 0, 99, {})
    H.pair_apply(Path("job"), server, ["style"], "a dog", None, "3,2", 0, 50, {})
    assert passed["appearance"]["seed"] == 0 and passed["appearance"]["num_inference_steps"] == 99
    assert passed["pair"]["style_scale"] == "3 2"
