"""Deterministic DDIM inversion, edit-friendly DDPM inversion, and a content-keyed on-disk cache.

Both inversions return an :class:`Inversion`: the latents along the grid (noisiest first, ``latents[K]`` is the
clean latent), the noise maps (edit-friendly only) and every setting that produced them, so it can be saved,
loaded and reused (one structure image, many appearances).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError, StyleforgeError, os_error_message
from ..io import atomic_write
from .sampling import EpsFn, alpha_bar, alpha_pair, ddim_step, ddpm_mean, ddpm_variance, step_ratio

DDIM = "ddim"
EDIT_FRIENDLY = "edit_friendly"
#: how the edit-friendly inversion draws its noise (part of cache keys, so inversions drawn otherwise are not reused)
NOISE_DRAWS = "per_step_least_noisy_first"


@dataclass
class Inversion:
    kind: str  # "ddim" or "edit_friendly"
    latents: torch.Tensor  # (K+1, C, h, w): latents[k] at timesteps[k], latents[K] = x0
    timesteps: torch.Tensor  # (K,) noisiest first
    noise: torch.Tensor | None = None  # (K, C, h, w) edit-friendly noise maps z_k, the last one zero
    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float = 1.0
    seed: int | None = None
    num_inference_steps: int = 0
    eta: float = 1.0
    model_id: str = ""
    weights: str = ""  # fingerprint of the weights that produced it (styleforge.cache)
    image_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # method settings that changed the UNet (FreeU, ...)
    family: str = ""  # "sd1" / "sdxl" of the model that made it ("" in files of older versions)

    @property
    def x0(self) -> torch.Tensor:
        return self.latents[-1]

    def start(self, skip: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latent at timesteps[skip], the remaining timesteps, their noise maps) for sampling after ``skip`` steps."""
        if not 0 <= skip < len(self.timesteps):
            raise InputError(f"skip must be in [0, {len(self.timesteps) - 1}], got {skip}")
        noise = None if self.noise is None else self.noise[skip:]
        return self.latents[skip], self.timesteps[skip:], noise

    def settings(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("latents", "timesteps", "noise")}
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Safetensors file; the settings travel in its metadata header. Written atomically."""
        path = Path(path)
        tensors = {"latents": self.latents.contiguous().cpu(), "timesteps": self.timesteps.contiguous().cpu()}
        if self.noise is not None:
            tensors["noise"] = self.noise.contiguous().cpu()
        meta = {"styleforge_inversion": json.dumps(self.settings(), default=str)}
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Inversion":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"inversion file not found: {path}")
        damaged = f"{path} is damaged or not a styleforge inversion file"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            settings = json.loads(meta["styleforge_inversion"])
        except Exception:
            raise InputError(f"{damaged} (write one with `styleforge invert`)") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"latents", "timesteps", "noise"}
        if not isinstance(settings, dict) or set(settings) - names:
            raise InputError(f"{damaged} (unknown settings: {', '.join(sorted(set(settings) - names)) or 'none'})")
        latents, timesteps, noise = tensors.get("latents"), tensors.get("timesteps"), tensors.get("noise")
        if latents is None or timesteps is None:
            raise InputError(f"{damaged} (it holds no latents or timesteps)")
        K = len(timesteps)
        if (latents.ndim != 4 or timesteps.ndim != 1 or len(latents) != K + 1
                or (noise is not None and tuple(noise.shape) != (K,) + tuple(latents.shape[1:]))
                or settings.get("kind") not in (DDIM, EDIT_FRIENDLY) or not torch.isfinite(latents).all()):
            raise InputError(f"{damaged} (its tensors do not fit together)")
        return cls(latents=latents, timesteps=timesteps, noise=noise, **settings)


def image_hash(image_tensor: torch.Tensor) -> str:
    """Content hash of the preprocessed image (never its file name)."""
    t = image_tensor.detach().float().cpu().contiguous()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()[:32]


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, scheduler, num_inference_steps: int, *, progress=None,
                **settings) -> Inversion:
    """Deterministic DDIM inversion: walk the grid upwards, predicting noise at the less noisy latent.

    At each grid point t the latent from the level below (t - ratio) is moved to level t with eps evaluated at t,
    the usual approximation that makes DDIM sampling from the result return close to ``x0``.
    """
    from .sampling import timesteps_for

    if x0.shape[0] != 1:
        raise ValueError("ddim_invert inverts one latent at a time")
    timesteps = timesteps_for(scheduler, num_inference_steps)
    ratio = step_ratio(scheduler, num_inference_steps)
    x = x0
    latents = [x0]
    for t in progress(timesteps.flip(0)) if progress else timesteps.flip(0):
        a_from, a_to = alpha_bar(scheduler, int(t) - ratio), alpha_bar(scheduler, t)
        x = ddim_step(x, eps_fn(x, t), a_from, a_to)
        latents.append(x)
    return Inversion(DDIM, torch.cat(latents[::-1]), timesteps, None, num_inference_steps=num_inference_steps, eta=0.0, **settings)


def draw_noise_maps(num_steps: int, latent_shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The edit-friendly inversion's K forward-noise maps, (K, C, h, w), indexed like the grid (noisiest first).

    Drawn as the official code (and LEDITS++) draws them: one latent-shaped float32 draw per grid point, least noisy
    point first, on ``generator``'s device (``device`` without a generator), so a seed reproduces the official maps
    on the same device. One batched draw in grid order would give other numbers.
    """
    gen_device = generator.device if generator is not None else device
    draws = [torch.randn(latent_shape, generator=generator, device=gen_device, dtype=torch.float32)
             for _ in range(num_steps)]
    return torch.cat(draws[::-1]).to(device)


@torch.no_grad()
def edit_friendly_invert(eps_fn: EpsFn, x0: torch.Tensor, scheduler, num_inference_steps: int, *,
                         generator: torch.Generator | None = None, eta: float = 1.0, zero_last_noise: bool = True,
                         progress=None, **settings) -> Inversion:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023), as in cross-image attention spec §4.

    1. Noise x0 independently to every grid point: x_k = sqrt(a_k) x0 + sqrt(1 - a_k) n_k.
    2. Going from noisy to clean, solve the sampler's step for the noise map that lands exactly on x_{k+1}:
       z_k = (x_{k+1} - mu_k) / (eta sigma_k).
    The official code zeroes the last map (``zero_last_noise=True``), so sampling then ends on mu_{K-1} instead of
    x0 (a difference of sigma_{K-1} z, about 0.02 z on SD's grid); ``False`` keeps it and reconstructs x0 exactly
    (as diffusers' LEDITS++ inversion does). ``x0`` is one latent (1, C, h, w); the K draws n_k come from
    ``generator`` (on its device) as in the official code: see :func:`draw_noise_maps`.
    """
    from .sampling import timesteps_for

    if x0.shape[0] != 1:
        raise ValueError("edit_friendly_invert inverts one latent at a time")
    timesteps = timesteps_for(scheduler, num_inference_steps)
    K = len(timesteps)
    draws = draw_noise_maps(K, tuple(x0.shape), generator, x0.device).to(x0)
    xs = [alpha_bar(scheduler, t).to(x0).sqrt() * x0[0] + (1 - alpha_bar(scheduler, t).to(x0)).sqrt() * draws[k]
          for k, t in enumerate(timesteps)] + [x0[0]]
    zs = torch.zeros((K,) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    for k in progress(range(K)) if progress else range(K):
        t = timesteps[k]
        a_t, a_prev = (a.to(x0) for a in alpha_pair(scheduler, t, num_inference_steps))
        x_t = xs[k][None]
        mu = ddpm_mean(x_t, eps_fn(x_t, t), a_t, a_prev, eta)[0]
        sigma = ddpm_variance(a_t, a_prev).sqrt()
        zs[k] = (xs[k + 1] - mu) / (eta * sigma)
        if k < K - 1:
            xs[k + 1] = mu + eta * sigma * zs[k]  # rewrite with the rounded map so errors do not build up
    if zero_last_noise:
        zs[K - 1] = 0
    settings.setdefault("extra", {})
    settings["extra"] = {**settings["extra"], "zero_last_noise": zero_last_noise, "noise_draws": NOISE_DRAWS}
    return Inversion(EDIT_FRIENDLY, torch.stack(xs), timesteps, zs, num_inference_steps=num_inference_steps, eta=eta,
                     **settings)


class InversionCache:
    """Inversions on disk, keyed by the image's content hash, the fingerprint of the model's weights (never its
    name or folder) and every setting that shapes the result. At most ``max_bytes`` in all (default
    ``$STYLEFORGE_CACHE_MAX_SIZE`` or 2 GiB): the least recently used entries are evicted first."""

    KEY_FIELDS = ("kind", "image_hash", "prompt", "negative_prompt", "guidance_scale", "seed", "num_inference_steps",
                  "eta", "model_id", "weights", "extra")
    SUFFIX = ".safetensors"

    def __init__(self, root: str | os.PathLike | None = None, *, max_bytes: int | str | None = None):
        from ..cache import LRUFolder, cache_home, max_bytes_from_env, parse_size

        self.root = Path(root) if root is not None else cache_home() / "inversions"
        self.max_bytes = max_bytes_from_env() if max_bytes is None else parse_size(max_bytes)
        self._folder = LRUFolder(self.root, self.SUFFIX, self.max_bytes)

    @classmethod
    def key(cls, **fields) -> str:
        missing = set(cls.KEY_FIELDS) - set(fields)
        if missing:
            raise ValueError(f"cache key needs {sorted(missing)}")
        if not fields["weights"]:
            raise ValueError("cache key needs the weights' fingerprint (pipeline.weights_fingerprint)")
        blob = json.dumps({k: fields[k] for k in cls.KEY_FIELDS}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def path(self, **fields) -> Path:
        return self.root / f"{self.key(**fields)}{self.SUFFIX}"

    def get(self, **fields) -> Inversion | None:
        if not fields.get("weights"):  # without the weights' fingerprint an entry could be another model's
            return None
        p = self.path(**fields)
        try:
            if not p.is_file():
                return None
            inversion = Inversion.load(p)
        except InputError:  # a damaged entry is recomputed, not trusted
            return None
        except OSError as e:
            self._unusable(e)
            return None
        self._folder.touch(p)
        return inversion

    def put(self, inversion: Inversion) -> Path | None:
        """Store ``inversion`` and evict down to the cap; None when it was not kept (no weights fingerprint, the
        cap). A cache that cannot be written is an optimisation lost, not a failure (warned once)."""
        if not inversion.weights:
            return None
        p = self.path(**{k: getattr(inversion, k) for k in self.KEY_FIELDS})
        try:
            inversion.save(p)
        except (OSError, StyleforgeError) as e:
            self._unusable(e)
            return None
        self._folder.evict()
        return p if p.exists() else None

    def usage(self):
        return self._folder.usage()

    def clear(self):
        return self._folder.clear()

    _warned: set = set()

    def _unusable(self, error: Exception) -> None:
        if str(self.root) not in InversionCache._warned:
            InversionCache._warned.add(str(self.root))
            reason = os_error_message(error) if isinstance(error, OSError) else str(error)
            warnings.warn(f"the inversion cache {self.root} cannot be used ({reason}); going on without it "
                          "(set STYLEFORGE_CACHE to a writable folder, or pass --no-cache)", stacklevel=3)
