"""OSASIS stage 1: fine-tune eps_B (a copy of DiffAE's eps_A) and the SPN on one artwork (paper §3.1, A.2-A.3).

Per iteration (official ``utils/trainer.py`` schedule, spec §4):

1. B codes from the latent DDIM, B photo-domain faces I_A^in = DDIM sample of eps_A, z_in = Enc(I_A^in);
2. encode I_A^in (and, once, the photo counterpart I_A^style) to x_t0 with eps_A;
3. for each decode step: style branch x' = x + w_style SPN(I_A^style), content branch x' = x + lambda SPN(I_A^in);
   eps_B steps both (unmixed codes); the losses of Eq. 26 on the *current step's* x0_hat; backward; one Adam
   step for eps_B and one for the SPN; states carried forward detached.

Checkpoints hold everything needed to continue bit-for-bit: weights, both optimisers, the sampling generator
and the global RNG (dropout) state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InputError, OutputError
from ..io import atomic_folder, atomic_write, make_strip, save_image, tensor_to_pil
from ..runtime import stop_if_diverged, stop_if_weights_diverged
from .core import encode_to_t0, generate_photos, initial_noise, sample_semantic_codes, spn_decode_step
from .config import SPN_KINDS, LossWeights, TrainConfig  # noqa: F401 (re-exported)
from .losses import OSASISLoss
from .models import DiffAEAutoencoder, LatentDDIMNet, PlainSPN, StructurePreservingNetwork
from .pipeline import RUN_FILE
from .schedule import NoiseSchedule

CKPT_DIR = "ckpt"


def make_unet_b(unet_a: DiffAEAutoencoder) -> DiffAEAutoencoder:
    """A trainable copy of eps_A's UNet without the (unused) semantic encoder."""
    cfg = {k: v for k, v in unet_a.config.items() if not k.startswith("_")}
    unet_b = DiffAEAutoencoder(**{**cfg, "semantic_encoder": False})
    state = {k: v for k, v in unet_a.state_dict().items() if not k.startswith("encoder.")}
    unet_b.load_state_dict(state, strict=True)
    return unet_b.to(next(unet_a.parameters()))


def make_spn(kind: str, zero_init: bool, *, norm_num_groups: int = 32, width: int = 128, hidden: int = 256,
             time_channels: int = 128, emb_dim: int = 512):
    if kind == "none":
        return None
    if kind == "plain":
        return PlainSPN(width=width, hidden=hidden, norm_num_groups=norm_num_groups)
    return StructurePreservingNetwork(width=width, hidden=hidden, time_channels=time_channels, emb_dim=emb_dim,
                                      norm_num_groups=norm_num_groups, zero_init_output=zero_init)


class OSASISTrainer:
    """Stage-1 trainer, constructible from components (any image embedder / perceptual distance)."""

    def __init__(self, config: TrainConfig, unet_a: DiffAEAutoencoder, latent_net: LatentDDIMNet, embed,
                 perceptual, style_image: torch.Tensor, style_photo: torch.Tensor, output: str | os.PathLike, *,
                 spn=None, schedule: NoiseSchedule | None = None, latent_schedule: NoiseSchedule | None = None,
                 run_metadata: dict | None = None):
        if unet_a.encoder is None:
            raise InputError("unet_a must carry the semantic encoder")
        self.config = config
        torch.manual_seed(config.seed)  # before the SPN (and anything else) draws its initial weights
        self.output = Path(output)
        self.plan = config.timestep_plan()
        self.schedule = schedule or NoiseSchedule.linear()
        self.latent_schedule = latent_schedule or NoiseSchedule.constant()
        self.unet_a = unet_a.eval().requires_grad_(False)
        self.latent_net = latent_net.eval().requires_grad_(False)
        p = next(unet_a.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.unet_b = make_unet_b(unet_a).requires_grad_(True)
        self.unet_b.gradient_checkpointing = config.gradient_checkpointing
        self.spn = spn if spn is not None else make_spn(config.spn, config.zero_init_spn)
        if self.spn is not None:
            self.spn.to(self.device).train().requires_grad_(True)
        self.style_image = style_image.to(self.device, self.dtype)  # I_B^style, (1, 3, H, W) in [-1, 1]
        self.style_photo = style_photo.to(self.device, self.dtype)  # I_A^style
        self.loss = OSASISLoss(embed, perceptual if config.weights.recon_lpips else None, self.style_image,
                               self.style_photo, config.weights, config.clip_recon)
        self.opt_unet = torch.optim.Adam(self.unet_b.parameters(), lr=config.lr)
        self.opt_spn = torch.optim.Adam(self.spn.parameters(), lr=config.spn_lr) if self.spn is not None else None
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        torch.manual_seed(config.seed)  # dropout draws from the global RNG; checkpoints store its state
        self.iteration = 0
        self.history: list[dict] = []
        self.run_metadata = run_metadata or {}
        with torch.no_grad():
            self.z_style_photo = unet_a.encode(self.style_photo)
            # the style branch starts from the same x_t0 every iteration: encode once
            self.x_style_t0 = encode_to_t0(unet_a, self.style_photo, self.z_style_photo, self.plan, self.schedule,
                                           clamp=config.clamp)

    # -- one iteration ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def content_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic photo-domain faces from the pretrained DiffAE and their semantic codes."""
        c = self.config
        x_T = initial_noise(self.unet_a, c.batch_size, self.generator)  # drawn before the code noise, as DiffAE does
        z = sample_semantic_codes(self.latent_net, c.batch_size, steps=c.latent_steps, generator=self.generator,
                                  schedule=self.latent_schedule)
        photos = generate_photos(self.unet_a, z.to(self.dtype), steps=c.content_steps, schedule=self.schedule,
                                 clamp=c.clamp, x_T=x_T)
        return photos, self.unet_a.encode(photos)

    def train_iteration(self) -> dict[str, float]:
        c = self.config
        photos, z_in = self.content_batch()
        with torch.no_grad():
            x_in = encode_to_t0(self.unet_a, photos, z_in, self.plan, self.schedule, clamp=c.clamp)
            e_in = self.loss.embed(photos)
        x_sty = self.x_style_t0
        self.unet_b.train(c.dropout)
        sums: dict[str, float] = {}
        steps = self.plan.decode_transitions()
        for k, t, t_next in steps:
            x_sty, x_in, terms = self.decode_step(k, t, t_next, x_sty, x_in, photos, z_in, e_in)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
        self.iteration += 1
        self.last_samples = (photos, x_in, x_sty)
        record = {"iteration": self.iteration, **{k: v / len(steps) for k, v in sums.items()}}
        self.history.append(record)
        return record

    def decode_step(self, k: int, t: int, t_next: int, x_sty: torch.Tensor, x_in: torch.Tensor, photos: torch.Tensor,
                    z_in: torch.Tensor, e_in: torch.Tensor):
        """Both branches one step down, the Eq. 26 loss on their x0_hat, one update of eps_B and of the SPN.

        Returns the detached next states (no gradient crosses steps) and the loss terms.
        """
        c = self.config
        amp = dict(device_type=self.device.type, dtype=torch.bfloat16 if c.autocast == "bf16" else torch.float16,
                   enabled=c.autocast is not None)
        common = dict(spn_time_input=c.spn_time_input, clamp=c.clamp)
        with torch.autocast(**amp):
            x_sty_next, x0_sty = spn_decode_step(self.unet_b, self.spn, x_sty, self.style_photo, k, t, t_next, self.schedule,
                                                 spn_weight=c.style_spn_weight, cond=self.z_style_photo, **common)
            x_in_next, x0_in = spn_decode_step(self.unet_b, self.spn, x_in, photos, k, t, t_next, self.schedule,
                                               spn_weight=c.spn_weight, cond=z_in, **common)
        terms = self.loss(x0_in.float(), photos, x0_sty.float(), content_embeds=e_in)
        stop_if_diverged({name: v.detach() for name, v in terms.items()}, self.iteration + 1)
        self.opt_unet.zero_grad(set_to_none=True)
        if self.opt_spn is not None:
            self.opt_spn.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.opt_unet.step()
        if self.opt_spn is not None:
            self.opt_spn.step()
        return x_sty_next.detach().to(self.dtype), x_in_next.detach().to(self.dtype), terms

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        return {
            "format": "styleforge-osasis-1",
            "iteration": self.iteration,
            "unet_b": self.unet_b.state_dict(),
            "spn": self.spn.state_dict() if self.spn is not None else {},
            "optim_unet": self.opt_unet.state_dict(),
            "optim_spn": self.opt_spn.state_dict() if self.opt_spn is not None else {},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": json.dumps(self.config.to_dict()),
            "history": json.dumps(self.history),
        }

    def _check_weights(self) -> None:
        stop_if_weights_diverged({f"unet_b.{k}": v for k, v in self.unet_b.state_dict().items()}, self.iteration)
        if self.spn is not None:
            stop_if_weights_diverged({f"spn.{k}": v for k, v in self.spn.state_dict().items()}, self.iteration)

    def save_checkpoint(self) -> Path:
        self._check_weights()
        path = self.output / CKPT_DIR / f"iter_{self.iteration:06d}.pt"
        with atomic_write(path) as tmp:
            torch.save(self.checkpoint_state(), tmp)
        old = sorted((self.output / CKPT_DIR).glob("iter_*.pt"))
        for stale in old[:-self.config.keep_checkpoints] if self.config.keep_checkpoints > 0 else []:
            stale.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise InputError(f"{path} is damaged or not a styleforge OSASIS training checkpoint") from None
        if not isinstance(state, dict) or state.get("format") != "styleforge-osasis-1":
            raise InputError(f"{path} is not a styleforge OSASIS training checkpoint")
        try:
            saved = json.loads(state["config"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path} is damaged (its settings are not readable)") from None
        for key in ("batch_size", "t0_ratio", "encode_steps", "decode_steps", "plan", "spn", "spn_time_input"):
            if saved.get(key) != getattr(self.config, key):
                raise InputError(f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, "
                                 f"now {getattr(self.config, key)!r}")
        try:
            self.unet_b.load_state_dict(state["unet_b"])
            if self.spn is not None:
                self.spn.load_state_dict(state["spn"])
                self.opt_spn.load_state_dict(state["optim_spn"])
            self.opt_unet.load_state_dict(state["optim_unet"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.iteration = int(state["iteration"])
            self.history = json.loads(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise InputError(f"{path} is damaged (its weights or states do not fit this model)") from None

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.output / CKPT_DIR).glob("iter_*.pt"))
        return found[-1] if found else None

    # -- outputs ---------------------------------------------------------------------------------------------------

    def save_samples(self) -> Path:
        photos, x_in, x_sty = self.last_samples
        imgs = tensor_to_pil(torch.cat([self.style_image, x_sty, photos, x_in]).float())
        n = photos.shape[0]
        strip = make_strip(imgs[:2] + [make_strip(imgs[2:2 + n]), make_strip(imgs[2 + n:])])
        return save_image(strip, self.output / "samples" / f"iter_{self.iteration:06d}.png", overwrite=True,
                          metadata={"method": "osasis-train", "iteration": self.iteration})

    def save_model(self) -> Path:
        """The stylization model: ``model/unet_b``, ``model/spn`` and ``osasis.json``."""
        self._check_weights()
        with atomic_folder(self.output / "model") as model_dir:
            self.unet_b.save_pretrained(model_dir / "unet_b")
            if self.spn is not None:
                self.spn.save_pretrained(model_dir / "spn")
        meta = {**self.run_metadata, "method": "osasis", "iteration": self.iteration, "spn": self.config.spn,
                "spn_time_input": self.config.spn_time_input, "train": self.config.to_dict()}
        meta.setdefault("style_image", "style.png")
        with atomic_write(self.output / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, default=str))
        return self.output

    def train(self, *, resume: bool | str | os.PathLike = False, progress: bool = True, stop_after: int | None = None) -> list[dict]:
        """Run to ``config.iterations`` (from the latest or a given checkpoint when ``resume``).

        ``stop_after`` ends the call after that many iterations of this call (checkpointing first).
        """
        c = self.config
        if resume:
            path = self.latest_checkpoint() if resume is True else Path(resume)
            if path is None:
                raise InputError(f"--resume: no checkpoint in {self.output / CKPT_DIR}")
            self.load_checkpoint(path)
        elif self.latest_checkpoint() is not None:
            raise OutputError(f"{self.output} already holds checkpoints; pass --resume to continue, or use a new folder")
        from tqdm.auto import tqdm

        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not progress, desc="osasis train")
        done = 0
        try:
            while self.iteration < c.iterations:
                record = self.train_iteration()
                done += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "iteration"})
                last = self.iteration == c.iterations or (stop_after is not None and done >= stop_after)
                if c.sample_every and (self.iteration % c.sample_every == 0 or last):
                    self.save_samples()
                if (c.checkpoint_every and self.iteration % c.checkpoint_every == 0) or last:
                    self.save_checkpoint()
                if stop_after is not None and done >= stop_after:
                    break
        finally:
            bar.close()
        if self.iteration >= c.iterations:
            self.save_model()
        return self.history
