"""The inversion cache: keyed by the weights actually loaded, size-capped with LRU eviction, `styleforge cache`."""

import os
import time

import pytest
import torch
from PIL import Image

from styleforge import cache as cache_mod
from styleforge.diffusion.inversion import InversionCache, ddim_invert


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEFORGE_CACHE", str(tmp_path / "home"))
    monkeypatch.delenv(cache_mod.MAX_SIZE_ENV, raising=False)


def test_same_named_folders_with_different_weights_do_not_share_entries(tmp_path, monkeypatch):
    from styleforge.diffusion.pipeline import InversionPipeline
    from styleforge.testing import save_tiny_model

    for parent, seed in (("a", 0), ("b", 1)):
        save_tiny_model(tmp_path / parent / "model", "sd1", seed=seed)
    image = Image.new("RGB", (64, 64), (200, 80, 30))
    cache = InversionCache(tmp_path / "inversions")
    results = {}
    for parent in ("a", "b", "a"):
        monkeypatch.chdir(tmp_path / parent)  # the same --model string "model" names two different models
        pipe = InversionPipeline.from_pretrained("model")
        pipe.set_progress_bar_config(disable=True)
        out = pipe(image, "a cat", kind="ddim", num_inference_steps=3, seed=0, cache=cache)
        results.setdefault(parent, []).append(out.inversion.latents)
    assert cache.usage().entries == 2  # one per model; the second run of "a" was a hit
    assert not torch.equal(results["a"][0], results["b"][0])
    assert torch.equal(results["a"][0], results["a"][1])


def test_folder_fingerprint_follows_contents_and_remembers_hashes(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "X", "unet": ["diffusers", "UNet"]}')
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"a" * 100)
    (folder / "notes.txt").write_text("not a component: ignored")
    first = cache_mod.folder_fingerprint(folder)
    calls = []
    real = cache_mod._sha256_file
    monkeypatch.setattr(cache_mod, "_sha256_file", lambda p: calls.append(p) or real(p))
    assert cache_mod.folder_fingerprint(folder) == first and calls == []  # size + mtime unchanged: not re-read
    (folder / "notes.txt").write_text("changed")
    assert cache_mod.folder_fingerprint(folder) == first
    weights.write_bytes(b"b" * 100)
    os.utime(weights, ns=(1, 1))  # same size, other contents, other mtime
    assert cache_mod.folder_fingerprint(folder) != first and calls == [weights.resolve()]


def test_hub_snapshot_fingerprint_uses_blob_names_without_reading(tmp_path, monkeypatch):
    repo = tmp_path / "models--o--n"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("c" * 40)
    (snap / "unet").mkdir(parents=True)
    blob_index, blob_unet = repo / "blobs" / ("1" * 40), repo / "blobs" / ("2" * 64)
    blob_index.write_text('{"unet": ["diffusers", "UNet"]}')
    blob_unet.write_bytes(b"weights")
    (snap / "model_index.json").symlink_to(blob_index)
    (snap / "unet" / "w.safetensors").symlink_to(blob_unet)
    monkeypatch.setattr(cache_mod, "_sha256_file", lambda p: pytest.fail(f"read {p}"))
    first = cache_mod.folder_fingerprint(snap)
    (snap / "unet" / "w.safetensors").unlink()
    (snap / "unet" / "w.safetensors").symlink_to(blob_index)
    assert cache_mod.folder_fingerprint(snap) != first


def _inversion(seed: int, steps: int = 4):
    from styleforge.testing import sd_scheduler

    eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    return ddim_invert(eps, torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed)), sd_scheduler(),
                       steps, prompt="p", negative_prompt="", guidance_scale=1.0, seed=seed, model_id="m",
                       weights="w", image_hash=str(seed), extra={})


def _key(inv):
    return {k: getattr(inv, k) for k in InversionCache.KEY_FIELDS}


def test_cache_evicts_least_recently_used_entries(tmp_path):
    a, b, c = (_inversion(s) for s in range(3))
    probe = InversionCache(tmp_path / "probe")
    size = probe.put(a).stat().st_size
    cache = InversionCache(tmp_path / "inv", max_bytes=int(2.5 * size))
    for inv in (a, b):
        cache.put(inv)
        time.sleep(0.02)
    assert cache.get(**_key(a)) is not None  # a is now more recent than b
    time.sleep(0.02)
    cache.put(c)
    assert cache.usage().entries == 2 and cache.usage().bytes <= cache.max_bytes
    assert cache.get(**_key(b)) is None and cache.get(**_key(a)) is not None and cache.get(**_key(c)) is not None
    assert InversionCache(tmp_path / "none", max_bytes=0).put(a) is None  # a zero cap keeps nothing


def test_cache_cap_from_environment(monkeypatch):
    monkeypatch.setenv(cache_mod.MAX_SIZE_ENV, "1.5G")
    assert InversionCache().max_bytes == int(1.5 * 1024 ** 3)
    assert cache_mod.parse_size("500MB") == 500 * 1024 ** 2 and cache_mod.parse_size("0") == 0
    from styleforge.errors import InputError

    with pytest.raises(InputError):
        cache_mod.parse_size("lots")


def test_cache_command_info_and_clear(capsys):
    from styleforge.cli.main import main

    InversionCache().put(_inversion(0))
    assert main(["cache", "info"]) == 0
    assert "inversions: 1 entries" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 inversions entries" in capsys.readouterr().out
    assert InversionCache().usage().entries == 0


def test_an_inversion_without_a_weights_fingerprint_is_never_cached(tmp_path):
    inv = _inversion(0)
    inv.weights = ""
    cache = InversionCache(tmp_path / "inv")
    assert cache.put(inv) is None and cache.get(**_key(inv)) is None and cache.usage().entries == 0
