"""styleforge batch: jobs from manifests and folders, ids, resume after kill -9, fault isolation, two processes,
work shared between jobs (one structure inversion for many appearances)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleforge import batch
from styleforge.batch.state import BATCH_DIR
from styleforge.cli.main import main
from styleforge.errors import InputError
from styleforge.io import read_metadata

SRC = str(Path(__file__).resolve().parents[1] / "src")
REGION = {"size": 64, "save_strip": False}


def _image(path, seed, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _mask(path, value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((40, 48), np.uint8)
    arr[10:30, 8:40] = value
    Image.fromarray(arr).save(path)
    return path


def _files(folder):
    """Every output file (relative path -> bytes), without the batch's own state and reports."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and BATCH_DIR not in p.parts and p.name not in ("failures.jsonl", "metrics.json")}


def _journal(out):
    lines = []
    for path in sorted((Path(out) / BATCH_DIR).glob("journal.rank*.jsonl")):
        lines += [dict(json.loads(line), file=path.name) for line in path.read_text().splitlines()]
    return lines


@pytest.fixture
def folders(tmp_path):
    contents = [_image(tmp_path / "c" / f"c{i}.png", i) for i in range(3)]
    styles = [_image(tmp_path / "s" / f"s{i}.png", 10 + i) for i in range(2)]
    return tmp_path / "c", tmp_path / "s", contents, styles


# --------------------------------------------------------------------------------------------- parsing


def test_manifests_csv_and_jsonl_and_bad_rows_refused_with_their_line(tmp_path, folders):
    _, _, contents, styles = folders
    mask = _mask(tmp_path / "m.png")
    csv = tmp_path / "jobs.csv"
    csv.write_text("content,style,mask,strength,name\n"
                   f"c/c0.png,s/s0.png,m.png,0.5,\n"
                   f"{contents[1]},s/s0.png;s/s1.png,m.png;m.png,,two\n")
    jobs = batch.build_jobs("region", batch.read_manifest(csv), {"strength": 0.8}, base=tmp_path)
    assert [j.name for j in jobs] == ["c0__s0__m", "two"]
    assert jobs[0].values["content"] == str(tmp_path / "c" / "c0.png") and jobs[0].values["strength"] == "0.5"
    assert jobs[1].values["style"] == [str(tmp_path / "s" / "s0.png"), str(tmp_path / "s" / "s1.png")]
    assert jobs[1].values["strength"] == 0.8  # the command line's value where the row leaves the cell empty
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"content": "c/c0.png", "style": ["s/s0.png"], "mask": ["m.png"], "strength": 0.5}) + "\n")
    same = batch.build_jobs("region", batch.read_manifest(jsonl), {"strength": 0.8}, base=tmp_path)
    assert same[0].id == jobs[0].id  # the same job however it is written

    for body, message in [
        ("content,style,strength\nc/c0.png,s/s0.png,1\nc/c1.png,s/s1.png,strong\n", r"jobs.csv line 3: .*--strength"),
        ("content,style,colour\nc/c0.png,s/s0.png,red\n", r"jobs.csv line 2: unknown option 'colour'"),
        ("content,style\nc/c0.png,s/s0.png\nc/missing.png,s/s0.png\n", r"jobs.csv line 3: input file not found"),
        ("content,style\nc/c0.png\n", r"jobs.csv line 2: 1 cells but the header has 2"),
        ("content,style,name\nc/c0.png,s/s0.png,../up\n", r"line 2: bad output name"),
        ("style\ns/s0.png\n", r"line 2: .*required: --content"),
    ]:
        csv.write_text(body)
        with pytest.raises(InputError, match=message):
            batch.build_jobs("region", batch.read_manifest(csv), base=tmp_path)
    jsonl.write_text('{"content": "c/c0.png", "style": "s/s0.png"}\n{"content": \n')
    with pytest.raises(InputError, match=r"jobs.jsonl line 2: not a JSON object"):
        batch.read_manifest(jsonl)


def test_folders_all_pairs_or_by_name(tmp_path, folders):
    cdir, sdir, contents, styles = folders
    jobs = batch.build_jobs("region", batch.folder_rows("region", cdir, sdir))
    assert [j.name for j in jobs] == [f"c{i}__s{k}" for i in range(3) for k in range(2)]  # content-major
    _image(tmp_path / "named" / "c0.png", 20), _image(tmp_path / "named" / "c2.png", 21), _image(tmp_path / "named" / "c1.png", 22)
    by_name = batch.build_jobs("appearance", batch.folder_rows("appearance", cdir, tmp_path / "named", pairing="by-name"),
                               {"domain": "animal"})
    assert [(Path(j.values["structure"]).name, Path(j.values["appearance"]).parent.name) for j in by_name] == \
           [("c0.png", "named"), ("c1.png", "named"), ("c2.png", "named")]
    with pytest.raises(InputError, match="by-name: no style image named like c0.png, c1.png, c2.png"):
        batch.folder_rows("region", cdir, sdir, pairing="by-name")
    with pytest.raises(InputError, match="one input image per job"):
        batch.folder_rows("translate", cdir, sdir)
    assert len(batch.folder_rows("translate", cdir)) == 3


def test_job_ids_follow_file_contents_and_options_not_names(tmp_path, folders):
    _, _, contents, styles = folders
    renamed = tmp_path / "elsewhere" / "renamed.png"
    renamed.parent.mkdir()
    shutil.copy(contents[0], renamed)

    def one(content, **options):
        return batch.build_jobs("region", [("row", {"content": str(content), "style": str(styles[0])})],
                                {**REGION, **options})[0].id

    base = one(contents[0])
    assert one(renamed) == base  # same bytes under another name: the same job
    assert one(contents[0], device="cpu") == base  # where it runs is not what it computes
    assert one(contents[1]) != base
    assert one(contents[0], strength=0.5) != base
    assert one(contents[0], seed=1) != base
    assert one(contents[0], strength="1.0") == base  # the parsed value counts, not its spelling


def test_method_options_on_the_command_line():
    assert batch.given_options("region", ["--strength", "0.5", "--paste-back", "--style", "x.png"]) == \
           {"strength": 0.5, "paste_back": True, "style": ["x.png"]}
    assert batch.given_options("translate", ["--source", "cat"]) == {"source": "cat"}
    with pytest.raises(InputError, match="batch's own option"):
        batch.given_options("region", ["-o", "x.png"])
    with pytest.raises(InputError, match="--strength"):
        batch.given_options("region", ["--strength", "strong"])


# --------------------------------------------------------------------------------------------- runs


def test_outputs_are_the_commands_own_and_manifest_columns_override(tmp_path, folders, capsys):
    cdir, sdir, contents, styles = folders
    csv = tmp_path / "jobs.csv"
    csv.write_text("content,style,strength\nc/c0.png,s/s0.png,\nc/c1.png,s/s1.png,1.0\n")
    out = tmp_path / "out"
    assert main(["batch", "region", "-o", str(out), "--manifest", str(csv), "--no-progress", "--strength", "0.5",
                 "--", "--size", "64", "--no-save-strip"]) == 0
    assert read_metadata(out / "c0__s0.png")["strength"] == 0.5
    assert read_metadata(out / "c1__s1.png")["strength"] == 1.0
    assert "region: 2 done, 0 skipped" in capsys.readouterr().out
    single = tmp_path / "single.png"
    assert main(["region", "apply", "--content", str(contents[0]), "--style", str(styles[0]), "--strength", "0.5",
                 "--size", "64", "--no-save-strip", "-o", str(single)]) == 0
    assert single.read_bytes() == (out / "c0__s0.png").read_bytes()  # exactly what the command writes
    summary = batch.run("region", out, manifest=csv, options={"strength": 0.5, **REGION}, dry_run=True, echo=lambda s: None)
    assert (summary.pending, summary.skipped) == (0, 2)
    summary = batch.run("region", out, manifest=csv, options={"strength": 0.6, **REGION}, dry_run=True, echo=lambda s: None)
    assert (summary.pending, summary.skipped) == (1, 1)  # only the row that takes the command line's strength


def test_killed_batch_resumes_with_only_the_rest_and_the_same_bytes(tmp_path, folders):
    cdir, sdir, contents, styles = folders
    _image(cdir / "c3.png", 3), _image(cdir / "c4.png", 4)  # 5 contents x 2 styles = 10 jobs
    options = {"size": 64, "strength": 0.7}  # with the strips (side outputs)
    reference = tmp_path / "uninterrupted"
    full = batch.run("region", reference, content_dir=cdir, style_dir=sdir, options=options, progress=False,
                     echo=lambda s: None)
    assert (full.done, full.failed) == (10, 0)

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "styleforge", "batch", "region", "-o", str(out), "--content-dir",
                             str(cdir), "--style-dir", str(sdir), "--no-progress", "--", "--size", "64", "--strength",
                             "0.7"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / BATCH_DIR / "journal.rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(_journal(out))
    assert 2 <= finished < 10, "the batch was not killed midway"

    resumed = batch.run("region", out, content_dir=cdir, style_dir=sdir, options=options, progress=False, echo=lambda s: None)
    assert (resumed.skipped, resumed.done, resumed.failed) == (finished, 10 - finished, 0)
    assert _files(out) == _files(reference)  # every output once, byte for byte the uninterrupted run's
    assert len(_files(out)) == 20  # 10 results and their strips
    ids = [e["id"] + e["name"] for e in _journal(out)]
    assert len(ids) == len(set(ids)) == 10  # no job ran twice
    assert not any((out / BATCH_DIR / "staging").rglob("*.png"))
    again = batch.run("region", out, content_dir=cdir, style_dir=sdir, options=options, progress=False, echo=lambda s: None)
    assert (again.done, again.skipped) == (0, 10)
    (out / "c1__s0.png").unlink()  # a lost output is made again
    assert batch.run("region", out, content_dir=cdir, style_dir=sdir, options=options, progress=False, echo=lambda s: None).done == 1
    assert _files(out) == _files(reference)


def test_a_bad_input_or_result_fails_only_its_job(tmp_path, folders, monkeypatch, capsys):
    cdir, sdir, contents, styles = folders
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    _mask(tmp_path / "empty.png", value=0)
    _mask(tmp_path / "m.png")
    csv = tmp_path / "jobs.csv"
    csv.write_text("content,style,mask,strength,name\n"
                   "c/c0.png,s/s0.png,m.png,,good\n"
                   "corrupt.png,s/s0.png,m.png,,corrupt\n"
                   "c/c1.png,s/s0.png,empty.png,,empty\n"
                   "c/c2.png,s/s1.png,m.png,0.25,nan\n"
                   "c/c2.png,s/s1.png,m.png,,good2\n")
    from styleforge.region import inference

    original = inference.edit

    def nan_at_quarter_strength(*args, **kwargs):
        result = original(*args, **kwargs)
        strength = args[5] if len(args) > 5 else kwargs.get("strength")
        return result * float("nan") if strength == 0.25 else result

    monkeypatch.setattr(inference, "edit", nan_at_quarter_strength)
    out = tmp_path / "out"
    command = ["batch", "region", "-o", str(out), "--manifest", str(csv), "--no-progress", "--size", "64", "--no-save-strip"]
    assert main(command) == 1
    printed = capsys.readouterr().out
    assert "2 done, 0 skipped (done before), 3 failed" in printed
    assert sorted(_files(out)) == ["good.png", "good2.png"]
    failures = {f["name"]: f for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"corrupt", "empty", "nan"}
    assert "corrupt" in failures["corrupt"]["reason"] or "not an image" in failures["corrupt"]["reason"]
    assert "empty" in failures["empty"]["reason"] and "NaN" in failures["nan"]["reason"]
    assert failures["corrupt"]["where"] == "jobs.csv line 3"
    assert main(command) == 1  # failed jobs are not retried unless asked
    assert "0 done, 2 skipped (done before), 3 failed" in capsys.readouterr().out
    monkeypatch.setattr(inference, "edit", original)
    assert main(command + ["--retry-failed"]) == 1
    assert "1 done, 2 skipped (done before), 2 failed" in capsys.readouterr().out  # the NaN job now succeeds
    assert sum(e["status"] == "failed" for e in _journal(out)) == 5


def test_two_processes_run_every_job_exactly_once(tmp_path, folders):
    cdir, sdir, contents, styles = folders
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "-m", "styleforge", "batch", "region", "-o", str(out), "--content-dir", str(cdir), "--style-dir", str(sdir),
               "--no-progress", "--", "--size", "64", "--no-save-strip", "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    entries = _journal(out)
    assert sorted(e["name"] for e in entries) == sorted(f"c{i}__s{k}" for i in range(3) for k in range(2))
    assert {e["file"] for e in entries} == {"journal.rank0.jsonl", "journal.rank1.jsonl"}
    assert {e["rank"] for e in entries} == {0, 1}
    assert "6 done, 0 skipped" in result.stdout and "over 2 processes" in result.stdout
    single = batch.run("region", tmp_path / "single", content_dir=cdir, style_dir=sdir, options={**REGION, "device": "cpu"},
                       progress=False, echo=lambda s: None)
    assert single.done == 6 and _files(out) == _files(tmp_path / "single")


def test_one_structure_many_appearances_inverts_the_structure_once(tmp_path, tiny_sd1_folder, monkeypatch):
    from styleforge.diffusion.sampling import count_unet_calls

    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path / "cache"))
    structure = _image(tmp_path / "in" / "structure.png", 0, (32, 32))
    appearances = [_image(tmp_path / "app" / f"a{i}.png", 5 + i, (32, 32)) for i in range(3)]
    steps = 10
    options = {"model": str(tiny_sd1_folder), "domain": "animal", "steps": steps, "skip_steps": 2, "swap_range_full": "1,9",
               "swap_range_half": "1,7", "adain": "full", "adain_range": "3,10", "size": 32}
    with count_unet_calls() as in_batch:
        summary = batch.run("appearance", tmp_path / "out", content_dir=tmp_path / "in", style_dir=tmp_path / "app",
                            options=options, progress=False, echo=lambda s: None)
    assert summary.done == 3 and summary.unet_rows == in_batch["rows"] > 0
    with count_unet_calls() as separate:
        for a in appearances:
            args = ["appearance", "--structure", str(structure), "--appearance", str(a), "--no-cache",
                    "-o", str(tmp_path / "sep" / f"structure__{a.stem}.png")]
            for key, value in options.items():
                args += [f"--{key.replace('_', '-')}", str(value)]
            assert main(args) == 0
    inversion_rows = steps * 2  # one edit-friendly inversion: K steps of a classifier-free guided pair
    assert separate["rows"] - in_batch["rows"] == 2 * inversion_rows  # jobs 2 and 3 reuse the structure's
    assert _files(tmp_path / "out") == _files(tmp_path / "sep")  # and give the same bytes


def test_metrics_json(tmp_path, folders, capsys):
    cdir, sdir, contents, styles = folders
    out = tmp_path / "out"
    assert main(["batch", "region", "-o", str(out), "--content-dir", str(cdir), "--style-dir", str(sdir),
                 "--no-progress", "--metrics", "ssim,psnr", "--size", "64", "--no-save-strip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"ssim", "psnr"} and len(metrics["ssim"]["per_job"]) == 6
    from styleforge.metrics import ssim
    from styleforge.metrics.images import to_tensor

    result = to_tensor(out / "c0__s1.png")
    expected = float(ssim(to_tensor(contents[0], tuple(result.shape[-2:])), result)[0])
    assert metrics["ssim"]["per_job"]["c0__s1"] == pytest.approx(expected)
    assert main(["batch", "region", "-o", str(out), "--content-dir", str(cdir), "--style-dir", str(sdir),
                 "--metrics", "sharpness"]) == 2
    assert "unknown metric 'sharpness'" in capsys.readouterr().err


def test_oneshot_jobs_write_their_output_folders(tmp_path):
    """A method whose command writes a folder: each job's files land in OUT/NAME/, as `oneshot apply` writes them."""
    from styleforge.osasis.tiny import save_tiny_osasis

    save_tiny_osasis(tmp_path)
    rs = np.random.RandomState(0)
    for name in ("art", "style_photo", "photos/p0", "photos/p1"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rs.randint(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32)).save(tmp_path / f"{name}.png")
    run = tmp_path / "run"
    assert main(["oneshot", "train", "--style", str(tmp_path / "art.png"), "--style-photo", str(tmp_path / "style_photo.png"),
                 "-o", str(run), "--model", str(tmp_path / "diffae"), "--latent", str(tmp_path / "latent"), "--clip",
                 str(tmp_path / "clip"), "--lpips-weight", "0", "--batch-size", "2", "--latent-steps", "5",
                 "--content-steps", "3", "--encode-steps", "10", "--decode-steps", "4", "--spn-time-input", "grid_index",
                 "--iterations", "2", "--no-progress", "--device", "cpu"]) == 0
    options = {"run": str(run), "encode_steps": 10, "decode_steps": 4, "device": "cpu"}
    summary = batch.run("oneshot", tmp_path / "out", content_dir=tmp_path / "photos", options=options, progress=False,
                        echo=lambda s: None)
    assert (summary.done, summary.failed) == (2, 0)
    assert sorted(_files(tmp_path / "out")) == ["p0/p0.png", "p1/p1.png"]
    assert main(["oneshot", "apply", "--run", str(run), "--input", str(tmp_path / "photos" / "p1.png"), "--encode-steps", "10",
                 "--decode-steps", "4", "--device", "cpu", "-o", str(tmp_path / "single")]) == 0
    assert (tmp_path / "single" / "p1.png").read_bytes() == (tmp_path / "out" / "p1" / "p1.png").read_bytes()


def test_translate_and_pair_jobs_equal_their_own_commands(tmp_path, tiny_sd1_folder):
    """The two remaining methods through a manifest: every output is byte-identical to its command's own."""
    model = str(tiny_sd1_folder)
    images = [_image(tmp_path / "in" / f"i{k}.png", 20 + k, (32, 32)) for k in range(2)]
    translate = {"model": model, "caption": "a photo of a cat", "steps": 2, "num_sentences": 4, "size": 32,
                 "cut_patch_sizes": "1", "cut_num_patches": 16, "seed": 3}
    rows = [{"image": str(images[0]), "source": "cat", "target": "dog"},
            {"image": str(images[1]), "source": "cat", "target": "fox", "seed": 5}]
    manifest = tmp_path / "translate.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = batch.run("translate", tmp_path / "t", manifest=manifest, options=translate, progress=False,
                        echo=lambda s: None)
    assert (summary.done, summary.failed) == (2, 0)
    produced = sorted(_files(tmp_path / "t"), key=lambda n: read_metadata(tmp_path / "t" / n)["params"]["seed"])
    assert len(produced) == 2
    for row, name in zip(rows, produced):
        out = tmp_path / "t_cli" / name
        values = {**translate, **row, "output": str(out)}
        args = ["translate", row["image"]] + sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in values.items()
                                                   if k != "image"), [])
        assert main(args) == 0
        assert out.read_bytes() == (tmp_path / "t" / name).read_bytes()

    style = tmp_path / "style"
    assert main(["pair", "train", "--model", model, "--content", str(images[0]), "--styled", str(images[1]),
                 "--style", "digital illustration", "-o", str(style), "--iterations", "2", "--style-start", "1",
                 "--content-rank", "4", "--style-rank", "4", "--resolution", "32", "--no-progress"]) == 0
    pair = {"model": model, "style": str(style), "steps": 2, "height": 32, "width": 32}
    manifest = tmp_path / "pair.csv"
    manifest.write_text("prompt,seed\na photo of a dog,1\na photo of a cat,2\n")
    summary = batch.run("pair", tmp_path / "p", manifest=manifest, options=pair, progress=False, echo=lambda s: None)
    assert (summary.done, summary.failed) == (2, 0)
    produced = sorted(_files(tmp_path / "p"), key=lambda n: read_metadata(tmp_path / "p" / n)["params"]["seed"])
    assert len(produced) == 2  # rows without an input file are named by their job id: match them by their settings
    for (prompt, seed), name in zip([("a photo of a dog", 1), ("a photo of a cat", 2)], produced):
        out = tmp_path / "p_cli" / name
        assert main(["pair", "apply", "--model", model, "--style", str(style), "--steps", "2", "--height", "32",
                     "--width", "32", "--prompt", prompt, "--seed", str(seed), "-o", str(out)]) == 0
        assert out.read_bytes() == (tmp_path / "p" / name).read_bytes()
