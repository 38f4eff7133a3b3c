"""Training of the region-wise stylizer: SwapAE losses + code consistency + content alignment (spec §3).

One iteration on a batch X (spec §3.5):
1. D step (E, G frozen): D and D_co on reals, reconstructions and swaps, with lazy R1 every ``r1_interval`` steps.
2. G step (D, D_co frozen): L_rec + L_G_adv + L_G_co, plus L_CC and L_CA every K steps; E and G share one Adam.
3. EMA update of E and G (the EMA copies are what inference uses).

Every random draw of step t comes from generators seeded with (seed, t, process), so ``--resume`` continues
exactly as an uninterrupted run would. Multi-GPU: one process per GPU through ``accelerate launch``; gradients
are averaged by hand because the networks are called through several methods (features/content/style), which
DistributedDataParallel's forward hook would not see.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, OutputError
from ..io import atomic_folder, atomic_write
from ..runtime import stop_if_diverged, stop_if_weights_diverged
from .inference import compose_features, save_model
from .losses import (
    code_consistency_loss,
    content_alignment_loss,
    d_logistic_loss,
    g_nonsaturating_loss,
    r1_penalty,
    reconstruction_loss,
    regularizer_active,
)
from .masks import RESAMPLE_MODES, random_masks, resample_mask
from .model import build_models
from .patches import sample_patches
from .presets import get_preset

NETWORKS = ("encoder", "generator", "discriminator", "patch_discriminator")
EMA_NETWORKS = ("encoder", "generator")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class TrainConfig:
    data: str
    output: str
    preset: str = "cpu64"
    iterations: int = 1000
    batch_size: int | None = None  # None: the preset's
    lr: float = 0.002
    # loss weights (spec §3.2-3.5)
    w_rec: float = 1.0
    w_gan: float = 1.0
    w_cooccur: float = 1.0
    w_cc: float = 1.0
    cc_style_weight: float = 1.0  # λ of Eq. 3
    w_ca: float = 1.0
    r1_gamma: float = 10.0
    r1_gamma_cooccur: float = 1.0
    r1_interval: int = 16
    # K-step schedule of L_CC and L_CA
    reg_interval: int = 16
    reg_offset: int = 0  # phase of L_CA relative to L_CC
    reg_start: int = 0
    reg_scale_by_interval: bool = False
    # details of L_CC / L_CA
    cc_detach_targets: bool = True
    ca_detach_target: bool = True
    ca_detach_input: bool = False
    ca_normalize_by_area: bool = False
    adv_on_region: bool = False
    mask_resample: str = "area"
    mask_coverage: tuple[float, float] = (0.1, 0.7)
    mask_trivial_probability: float = 0.0
    # discriminator patches
    n_crop: int | None = None
    n_ref: int | None = None
    patch_scale: tuple[float, float] = (1 / 8, 1 / 4)
    # architecture options
    demod: str = "standard"
    normalize_codes: bool = True
    style_gain: float | None = None  # None: the generator's default, 1 (the official scale)
    content_channels: int | None = None  # width of the content code C; None: the preset's
    # data and augmentation
    crop_scale: tuple[float, float] = (0.6, 1.0)
    load_size: int | None = None  # None: twice the training resolution
    # bookkeeping
    ema_half_life_images: float | None = None
    seed: int = 0
    sample_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = None
    device: str = "auto"
    progress: bool = True
    command: str | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- data


def load_image_folder(folder: str | os.PathLike, min_size: int, load_size: int, exclude: str | os.PathLike | None = None):
    """All usable images under ``folder`` (recursively) as uint8 (3,h,w) tensors with shorter side ≤ ``load_size``.

    Unreadable files and images whose shorter side is below ``min_size`` are skipped; returns (images, names,
    skipped) where ``skipped`` lists (path, reason). Files under ``exclude`` (the run folder) are ignored.
    """
    from PIL import Image

    from ..io import load_image

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"training data folder not found: {folder}")
    excluded = Path(exclude).resolve() if exclude is not None else None
    images, names, skipped = [], [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue  # a run folder inside the data folder: its samples are outputs, not data
        if path.suffix.lower() in (".txt", ".json", ".md", ".csv"):
            continue  # provenance and notes beside the images are not images
        try:
            img = load_image(path)
        except InputError as e:
            skipped.append((str(path), str(e)))
            continue
        w, h = img.size
        if min(w, h) < min_size:
            skipped.append((str(path), f"too small ({w}x{h}; the shorter side must be at least {min_size} px)"))
            continue
        scale = load_size / min(w, h)
        if scale < 1:
            img = img.resize((max(load_size, round(w * scale)), max(load_size, round(h * scale))), Image.BICUBIC, reducing_gap=3.0)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous())
        names.append(str(path.relative_to(root)))
    if not images:
        raise InputError(f"no usable training images in {folder} ({len(skipped)} file(s) skipped)")
    return images, names, skipped


def sample_batch(images: list[torch.Tensor], n: int, resolution: int, generator: torch.Generator,
                 crop_scale=(0.6, 1.0), flip: bool = True) -> torch.Tensor:
    """n random crops (side uniform in ``crop_scale`` × shorter side), resized to ``resolution``, h-flipped with p=1/2.

    Random-resized crops are a departure from SwapAE (flips only): the bundled model sees a few dozen photos.
    """
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (), generator=generator))]
        _, h, w = img.shape
        u = torch.rand(4, generator=generator)
        side = max(1, round((crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[0].item()) * min(h, w)))
        top = int(u[1].item() * (h - side + 1)) if h > side else 0
        left = int(u[2].item() * (w - side + 1)) if w > side else 0
        crop = img[:, top:top + side, left:left + side].float()[None]
        crop = F.interpolate(crop, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        if flip and u[3].item() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out).clamp(0, 255) / 127.5 - 1.0


def center_batch(images: list[torch.Tensor], n: int, resolution: int) -> torch.Tensor:
    """The first n images, centre-cropped and resized (the fixed images of the sample grids)."""
    out = []
    for img in images[:n]:
        _, h, w = img.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = img[:, top:top + side, left:left + side].float()[None]
        out.append(F.interpolate(crop, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out).clamp(0, 255) / 127.5 - 1.0


# --------------------------------------------------------------------------------------------- helpers


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def _load_safetensors(module: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
        module.load_state_dict(state, strict=True)
    except Exception:
        raise InputError(f"{folder / WEIGHTS_NAME} is damaged or does not fit this model") from None


def _read_state(folder: Path) -> dict:
    """A checkpoint's state.json, refusing a damaged one by name."""
    try:
        state = json.loads((folder / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError
        return state
    except (OSError, ValueError, UnicodeDecodeError):
        raise InputError(f"{folder / 'state.json'} is damaged (not a training state file)") from None


def ema_decay(batch_images: int, half_life_images: float) -> float:
    """Per-step decay for an EMA whose weights halve every ``half_life_images`` images."""
    return 0.5 ** (batch_images / half_life_images) if half_life_images > 0 else 0.0


@torch.no_grad()
def update_ema(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1-decay)·live; decay 0 copies, decay 1 keeps (lerp is exact at both ends)."""
    for p_ema, p in zip(ema.parameters(), live.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), live.buffers()):
        b_ema.copy_(b)


def _raise_keyboard_interrupt_on_sigterm():
    """Treat SIGTERM like Ctrl-C so that `kill PID` of a background run also saves a checkpoint first."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def step_seed(seed: int, step: int, process: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + process * 104_729) % (2**62)


def _check_numbers(cfg: TrainConfig) -> None:
    """The CLI's checks for the Python API: a NaN weight or a negative interval is refused by name, before any work."""
    from .. import validation as V

    for name in ("w_rec", "w_gan", "w_cooccur", "w_cc", "cc_style_weight", "w_ca", "r1_gamma", "r1_gamma_cooccur"):
        V.non_negative.check(getattr(cfg, name), name)
    for name in ("sample_every", "checkpoint_every", "keep_checkpoints", "reg_offset", "reg_start"):
        V.non_negative_int.check(getattr(cfg, name), name)
    V.check_all(iterations=(cfg.iterations, V.count), lr=(cfg.lr, V.positive), r1_interval=(cfg.r1_interval, V.count),
                reg_interval=(cfg.reg_interval, V.count), mask_trivial_probability=(cfg.mask_trivial_probability, V.fraction),
                mask_coverage=(cfg.mask_coverage, V.fraction_pair), style_gain=(cfg.style_gain, V.optional_positive),
                ema_half_life_images=(cfg.ema_half_life_images, V.optional_non_negative),
                batch_size=(cfg.batch_size, V.optional_count), load_size=(cfg.load_size, V.optional_side))


# --------------------------------------------------------------------------------------------- trainer


class RegionTrainer:
    """Holds the four networks, the EMA copies, the optimisers and the data; ``run()`` trains."""

    def __init__(self, config: TrainConfig, images: list[torch.Tensor] | None = None):
        from accelerate import Accelerator

        self.config = cfg = config
        _check_numbers(cfg)
        self.out = Path(cfg.output)
        self.resume_from = self._find_resume(cfg.resume) if cfg.resume else None
        if self.resume_from is not None:
            saved = _read_state(self.resume_from)["config"]
            for key in ("preset", "demod", "normalize_codes", "style_gain", "content_channels"):
                if saved.get(key) != getattr(cfg, key):
                    raise InputError(f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}")
        self.preset = get_preset(cfg.preset)
        train_defaults = self.preset["train"]
        self.batch_size = cfg.batch_size or train_defaults["batch_size"]
        self.n_crop = cfg.n_crop or train_defaults["n_crop"]
        self.n_ref = cfg.n_ref or train_defaults["n_ref"]
        half_life = cfg.ema_half_life_images if cfg.ema_half_life_images is not None else train_defaults["ema_half_life_images"]
        if cfg.mask_resample not in RESAMPLE_MODES:
            raise InputError(f"--mask-resample must be one of {', '.join(RESAMPLE_MODES)}")
        if cfg.reg_interval < 1 or cfg.r1_interval < 1:
            raise InputError("--reg-interval and --r1-interval must be at least 1")
        if self.batch_size < 2:
            raise InputError("--batch-size must be at least 2 (each image takes its style from its neighbour)")

        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu)
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.resolution = self.preset["encoder"]["image_size"]
        self.preset["encoder"]["normalize_codes"] = cfg.normalize_codes
        self.preset["generator"]["normalize_codes"] = cfg.normalize_codes
        self.preset["generator"]["demod"] = cfg.demod
        if cfg.style_gain is not None:
            self.preset["generator"]["style_gain"] = cfg.style_gain
        if cfg.content_channels is not None:
            if cfg.content_channels < 1:
                raise InputError("--content-channels must be at least 1")
            self.preset["encoder"]["content_channels"] = self.preset["generator"]["content_channels"] = cfg.content_channels

        torch.manual_seed(cfg.seed)
        nets = build_models(self.preset)
        self.encoder, self.generator = nets["encoder"], nets["generator"]
        self.discriminator, self.patch_discriminator = nets["discriminator"], nets["patch_discriminator"]
        self.encoder_ema = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        for net in self._all_networks().values():
            net.to(self.device)
        self.ema_decay = ema_decay(self.batch_size * self.accelerator.num_processes, half_life)

        self.g_params = list(self.encoder.parameters()) + list(self.generator.parameters())
        self.d_params = list(self.discriminator.parameters()) + list(self.patch_discriminator.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr, betas=(0.0, 0.99))
        c = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy-R1 correction of lr and betas (StyleGAN2)
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr * c, betas=(0.0 ** c, 0.99 ** c))

        self.skipped: list[tuple[str, str]] = []
        self.image_names: list[str] = []
        if images is None:
            images, self.image_names, self.skipped = load_image_folder(
                cfg.data, self.resolution, cfg.load_size or 2 * self.resolution, exclude=cfg.output)
        self.images = images
        self.step = 0
        self.train_seconds = 0.0
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)

    # ---- bookkeeping
    def _all_networks(self) -> dict[str, torch.nn.Module]:
        return {
            "encoder": self.encoder, "generator": self.generator, "discriminator": self.discriminator,
            "patch_discriminator": self.patch_discriminator, "encoder_ema": self.encoder_ema, "generator_ema": self.generator_ema,
        }

    def _find_resume(self, resume: str) -> Path:
        if resume == "latest":
            pointer = Path(self.config.output) / "checkpoints" / "latest"
            if not pointer.exists():
                raise InputError(f"nothing to resume: no checkpoint in {Path(self.config.output) / 'checkpoints'}")
            path = pointer.parent / pointer.read_text().strip()
        else:
            path = Path(resume)
            if (path / "checkpoints" / "latest").exists():
                path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
        if not (path / "state.json").exists():
            raise InputError(f"not a training checkpoint (no state.json): {path}")
        return path

    def _reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes (no-op with one process)."""
        if self.accelerator.num_processes == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.accelerator.num_processes
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def _seed_step(self, step: int) -> torch.Generator:
        seed = step_seed(self.config.seed, step, self.accelerator.process_index)
        torch.manual_seed(seed)  # the generator's training noise draws from the global RNG
        return torch.Generator().manual_seed(seed)

    def _patches(self, images: torch.Tensor, n: int, rng: torch.Generator) -> torch.Tensor:
        size = self.patch_discriminator.config.patch_size
        return sample_patches(images, n, size, scale=self.config.patch_scale, generator=rng)

    def _draw_masks(self, rng: torch.Generator) -> torch.Tensor:
        cfg = self.config
        return random_masks(self.batch_size, self.resolution, self.resolution, rng, coverage=tuple(cfg.mask_coverage),
                            trivial_probability=cfg.mask_trivial_probability).to(self.device)

    def _hybrid(self, features_a, features_swap, masks):
        """I_h = G(H_c(ê), H_s(ê)) with ê the feature composite of Eq. 5 (Eq. 6)."""
        mask_e = resample_mask(masks, tuple(features_a.shape[-2:]), self.config.mask_resample)
        composed = compose_features(features_a, features_swap, mask_e)
        return self.generator(self.encoder.content(composed), self.encoder.style(composed))

    # ---- one iteration
    def discriminator_step(self, real: torch.Tensor, step: int, rng: torch.Generator, masks=None) -> dict[str, float]:
        cfg = self.config
        self.encoder.requires_grad_(False)
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(True)
        self.patch_discriminator.requires_grad_(True)
        n = real.shape[0]
        real_b = real.roll(1, 0)  # B = roll(A, 1): sample i takes its style from sample i-1
        with torch.no_grad():
            features = self.encoder.features(real)
            content, style = self.encoder.content(features), self.encoder.style(features)
            reconstruction = self.generator(content, style)
            swap = self.generator(content, style.roll(1, 0))
            hybrid = None
            if masks is not None:
                hybrid = self._hybrid(features, self.encoder.features(swap), masks)
        logits_real = self.discriminator(real)
        loss_d = F.softplus(-logits_real).mean() + 0.5 * F.softplus(self.discriminator(reconstruction)).mean() \
            + 0.5 * F.softplus(self.discriminator(swap)).mean()
        if hybrid is not None:
            loss_d = loss_d + 0.5 * F.softplus(self.discriminator(hybrid)).mean()
        reference = self._patches(real_b, self.n_ref, rng)
        query_real = self._patches(real_b, self.n_crop, rng)
        query_fake = self._patches(swap, self.n_crop, rng)
        loss_dco = d_logistic_loss(self.patch_discriminator(query_real, reference, n),
                                   self.patch_discriminator(query_fake, reference, n))
        total = cfg.w_gan * loss_d + cfg.w_cooccur * loss_dco
        logs = {"D": loss_d.item(), "Dco": loss_dco.item()}
        if step % cfg.r1_interval == 0:
            # lazy R1 (StyleGAN2): every r1_interval steps, scaled by the interval; folded into the same Adam step
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.discriminator(real_r1), real_r1, cfg.r1_gamma)
            query_r1 = query_real.detach().requires_grad_(True)
            reference_r1 = reference.detach().requires_grad_(True)
            r1_co = r1_penalty(self.patch_discriminator(query_r1, reference_r1, n), [query_r1, reference_r1], cfg.r1_gamma_cooccur)
            total = total + cfg.r1_interval * (cfg.w_gan * r1 + cfg.w_cooccur * r1_co)
            logs.update(R1=r1.item(), R1co=r1_co.item())
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        self._reduce_gradients(self.d_params)
        self.opt_d.step()
        return logs

    def generator_step(self, real: torch.Tensor, step: int, rng: torch.Generator, masks=None) -> dict[str, float]:
        cfg = self.config
        self.encoder.requires_grad_(True)
        self.generator.requires_grad_(True)
        self.discriminator.requires_grad_(False)
        self.patch_discriminator.requires_grad_(False)
        n = real.shape[0]
        real_b = real.roll(1, 0)
        features = self.encoder.features(real)
        content, style = self.encoder.content(features), self.encoder.style(features)
        style_b = style.roll(1, 0)
        reconstruction = self.generator(content, style)
        swap = self.generator(content, style_b)  # I_g = G(C_A, S_B)
        loss_rec = reconstruction_loss(reconstruction, real)  # Eq. 1
        # Eq. 2 with SwapAE's weights: 0.5 for reconstructions, 1.0 for swaps
        loss_adv = 0.5 * g_nonsaturating_loss(self.discriminator(reconstruction)) + g_nonsaturating_loss(self.discriminator(swap))
        reference = self._patches(real_b, self.n_ref, rng)
        loss_co = g_nonsaturating_loss(self.patch_discriminator(self._patches(swap, self.n_crop, rng), reference, n))
        total = cfg.w_rec * loss_rec + cfg.w_gan * loss_adv + cfg.w_cooccur * loss_co
        logs = {"rec": loss_rec.item(), "G": loss_adv.item(), "Gco": loss_co.item()}

        run_cc = cfg.w_cc > 0 and regularizer_active(step, cfg.reg_interval, 0, cfg.reg_start)
        run_ca = cfg.w_ca > 0 and regularizer_active(step, cfg.reg_interval, cfg.reg_offset, cfg.reg_start)
        scale = cfg.reg_interval if cfg.reg_scale_by_interval else 1.0
        features_swap = self.encoder.features(swap) if (run_cc or run_ca) else None
        if run_cc:
            loss_cc = code_consistency_loss(  # Eq. 3
                self.encoder.content(features_swap), self.encoder.style(features_swap), content, style_b,
                style_weight=cfg.cc_style_weight, detach_targets=cfg.cc_detach_targets,
            )
            total = total + scale * cfg.w_cc * loss_cc
            logs["CC"] = loss_cc.item()
        if run_ca:
            if masks is None:
                masks = self._draw_masks(rng)
            swap_input = self.encoder.features(swap.detach()) if cfg.ca_detach_input else features_swap
            hybrid = self._hybrid(features, swap_input, masks)  # Eqs. 5-6
            loss_ca = content_alignment_loss(  # Eq. 7
                hybrid, swap, real, masks, detach_target=cfg.ca_detach_target, normalize_by_area=cfg.ca_normalize_by_area,
            )
            total = total + scale * cfg.w_ca * loss_ca
            logs["CA"] = loss_ca.item()
            if cfg.adv_on_region:
                total = total + cfg.w_gan * 0.5 * g_nonsaturating_loss(self.discriminator(hybrid))
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self._reduce_gradients(self.g_params)
        self.opt_g.step()
        return logs

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        rng = self._seed_step(step)
        real = sample_batch(self.images, self.batch_size, self.resolution, rng, tuple(cfg.crop_scale)).to(self.device)
        region_step = cfg.w_ca > 0 and regularizer_active(step, cfg.reg_interval, cfg.reg_offset, cfg.reg_start)
        # masks are drawn before the D step so that D (with --adv-on-region) and G see the same ones
        masks = self._draw_masks(rng) if region_step else None
        self.encoder.train(), self.generator.train()
        logs = self.discriminator_step(real, step, rng, masks if cfg.adv_on_region else None)
        logs.update(self.generator_step(real, step, rng, masks))
        update_ema(self.encoder_ema, self.encoder, self.ema_decay)
        update_ema(self.generator_ema, self.generator, self.ema_decay)
        return logs

    # ---- checkpoints
    def save_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        stop_if_weights_diverged({f"{key}.{k}": v for key, net in self._all_networks().items()
                                  for k, v in net.state_dict().items()}, self.step)
        folder = self.out / "checkpoints"
        name = f"step_{self.step:07d}"
        final = folder / name
        with atomic_folder(final) as tmp:  # a failure (full disk) leaves neither a partial nor a temporary folder
            for key, net in self._all_networks().items():
                net.save_pretrained(tmp / key, safe_serialization=True)
            torch.save({"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}, tmp / "optimizers.pt")
            state = {
                "step": self.step,
                "train_seconds": self.train_seconds,
                "config": asdict(self.config),
                "preset": self.preset["name"],
                # every draw is re-seeded per step, but the RNG states are kept for inspection and completeness
                "torch_rng_state": torch.get_rng_state().tolist(),
                "cuda_rng_state": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            }
            (tmp / "state.json").write_text(json.dumps(state))
        _atomic_write_text(folder / "latest", name + "\n")
        existing = sorted(p for p in folder.glob("step_*") if p.is_dir())
        for old in existing[: max(0, len(existing) - max(1, self.config.keep_checkpoints))]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, folder: Path) -> None:
        for key, net in self._all_networks().items():
            _load_safetensors(net, folder / key)
        try:
            optimizers = torch.load(folder / "optimizers.pt", map_location=self.device, weights_only=True)
            self.opt_g.load_state_dict(optimizers["opt_g"])
            self.opt_d.load_state_dict(optimizers["opt_d"])
        except Exception:  # also a pickle that is not plain tensors: refused by weights_only, named here in one line
            raise InputError(f"{folder / 'optimizers.pt'} is damaged or not a styleforge optimizer state") from None
        state = _read_state(folder)
        try:
            self.step = int(state["step"])
            self.train_seconds = float(state.get("train_seconds", 0.0))
            torch.set_rng_state(torch.tensor(state["torch_rng_state"], dtype=torch.uint8))
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise InputError(f"{folder / 'state.json'} is damaged (not a training state file)") from None

    # ---- outputs
    @torch.no_grad()
    def sample_grid(self, n: int = 4):
        """Rows: content, style, reconstruction, global swap, mask, region transfer (EMA networks)."""
        from ..io import tensor_to_pil
        from .inference import region_transfer

        n = max(2, min(n, len(self.images))) if len(self.images) >= 2 else 2
        imgs = self.images if len(self.images) >= n else self.images * n
        content = center_batch(imgs, n, self.resolution).to(self.device)
        style = content.roll(1, 0)
        masks = random_masks(n, self.resolution, self.resolution, torch.Generator().manual_seed(1234)).to(self.device)
        enc, gen = self.encoder_ema, self.generator_ema
        c, s = enc(content)
        rec = gen(c, s)
        swap = gen(c, enc(style)[1])
        region = region_transfer(enc, gen, content, style, masks, mask_resample=self.config.mask_resample)
        rows = [content, style, rec, swap, masks.expand(-1, 3, -1, -1) * 2 - 1, region]
        grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
        return tensor_to_pil(grid[None])[0]

    def write_samples(self) -> Path | None:
        if not self.is_main:
            return None
        from ..io import save_image

        path = self.out / "samples" / f"step_{self.step:07d}.png"
        save_image(self.sample_grid(), path, overwrite=True, metadata={"method": "region", "step": self.step})
        return path

    def export_model(self) -> Path:
        info = {
            "preset": self.preset["name"],
            "iterations": self.step,
            "images_seen": self.step * self.batch_size * self.accelerator.num_processes,
            "train_seconds": round(self.train_seconds, 1),
            "training_images": len(self.images),
            "command": self.config.command,
        }
        return save_model(self.out / "model", self.encoder_ema, self.generator_ema, info)

    def report_skipped(self) -> None:
        if not self.skipped or not self.is_main:
            return
        lines = [f"{path}\t{reason}" for path, reason in self.skipped]
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.out / "skipped.txt", "\n".join(lines) + "\n")
        print(f"styleforge: skipped {len(self.skipped)} unusable file(s) of the training data "
              f"(listed in {self.out / 'skipped.txt'}); training on {len(self.images)} image(s)", file=sys.stderr)
        for path, reason in self.skipped[:5]:
            print(f"  skipped {path}: {reason}", file=sys.stderr)

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg = self.config
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.out / "config.json", json.dumps(asdict(cfg), indent=2, default=str) + "\n")
        self.report_skipped()
        bar = tqdm(total=cfg.iterations, initial=self.step, disable=not (cfg.progress and self.is_main),
                   desc=f"region {self.preset['name']}", dynamic_ncols=True)
        log_path = self.out / "log.jsonl"
        if self.is_main and self.resume_from is not None and log_path.exists():
            # drop lines logged after the checkpoint by an interrupted process; they are about to be redone
            kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
            _atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        log_file = open(log_path, "a") if self.is_main else None
        previous_sigterm = _raise_keyboard_interrupt_on_sigterm()
        try:
            while self.step < cfg.iterations:
                t0 = time.perf_counter()
                logs = self.train_step(self.step)
                self.train_seconds += time.perf_counter() - t0
                self.step += 1
                stop_if_diverged(logs, self.step)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
                if log_file and (self.step % cfg.log_every == 0 or self.step == cfg.iterations):
                    log_file.write(json.dumps({"step": self.step, "seconds": round(self.train_seconds, 2), **logs}) + "\n")
                    log_file.flush()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_samples()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.iterations:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: keep the work done so far; `--resume` continues from here
            if self.is_main and self.step > 0:
                print(f"\nstyleforge: interrupted; saved {self.save_checkpoint()} (continue with --resume)", file=sys.stderr)
            raise
        finally:
            bar.close()
            if log_file:
                log_file.close()
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        if self.is_main:
            self.save_checkpoint()
            self.write_samples()
            return self.export_model()
        return self.out / "model"


def train(config: TrainConfig) -> Path:
    """Train (or resume) and return the folder of the exported inference model (``OUTPUT/model``)."""
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"training output must be a folder: {out}")
    if not config.resume and (out / "checkpoints" / "latest").exists():
        raise OutputError(f"{out} already holds a training run; pass --resume to continue it or choose another -o")
    return RegionTrainer(config).run()
