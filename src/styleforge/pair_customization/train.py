"""PairCustomization training: a content LoRA and a style LoRA from one (content, stylized) pair (spec §3).

One iteration k (spec §3.5, the official code's alternating schedule):

1. latents z_c, z_s of the jointly cropped/flipped pair (VAE posterior samples); one t ~ U{0..T-1}, one eps;
2. content step: L_content = ||eps - eps_{W0 + B_c A_c}(x_t(z_c), t, p_c)||^2, AdamW step (moves B_c only);
3. if k >= style_start: combined step: L_combined = ||eps - eps_{W0 + sg[B_c A_c] + B_s A_s}(x_t(z_s), t, p_s)||^2,
   AdamW step (moves B_s only: the content adapter's gradient is stopped, paper Eq. 7).

A is fixed (buffers) and B starts at zero, so before the style phase the style adapter is exactly zero. All random
draws come from one CPU generator whose state is checkpointed with the adapters, the optimizer and the global RNG
states, so ``resume`` continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from ..diffusion.pipeline import SDXL, StyleforgePipeline
from ..diffusion.prompts import Conditioning
from .. import validation as V
from ..errors import InputError, OutputError
from ..runtime import stop_if_diverged, stop_if_weights_diverged
from ..io import ImageLike, atomic_folder, atomic_write, load_image, make_strip, pil_to_tensor, save_image
from .adapters import CONTENT, DEFAULT_BASIS_SEED, DEFAULT_TARGETS, STYLE, UNetAdapters, attach_pair_adapters
from .style_io import CONTENT_DIR, STYLE_WEIGHTS, StyleAdapter, style_prompt

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
CHECKPOINTS = "checkpoints"
#: settings that shape the result: a resumed run must use the same values
RESULT_FIELDS = ("style_word", "content_prompt", "token", "content_rank", "style_rank", "content_alpha", "style_alpha",
                 "targets", "basis_seed", "orthogonal", "style_start", "lr", "weight_decay", "adam_beta1", "adam_beta2",
                 "adam_eps", "max_grad_norm", "resolution", "center_crop", "flip_probability", "vae_sample", "seed")


@dataclass
class PairCustomizationConfig:
    """Every training hyper-parameter, with the spec's defaults (official code unless noted)."""

    style_word: str = "digital illustration"  # desc of the suffix "in <desc> style"
    content_prompt: str = "a photo of a sbu scene"  # must contain ``token`` (official: "A photo of a sbu dog")
    token: str = "sbu"  # the rare identifier V*
    content_rank: int = 64
    style_rank: int = 64
    content_alpha: float | None = None  # None: = rank (scale 1, official)
    style_alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    basis_seed: int = DEFAULT_BASIS_SEED
    orthogonal: bool = True  # False: trainable Gaussian A (the paper's ablation)
    iterations: int = 750
    style_start: int = 250  # first iteration with a style step
    lr: float = 1e-5
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None  # official: no clipping
    resolution: int = 512
    center_crop: bool = True  # official: random crop (spec §9 #6 recommends centre)
    flip_probability: float = 0.0  # official: 1.0 (always mirrored)
    vae_sample: bool = True  # posterior sample (official) or its mean
    seed: int = 0
    mixed_precision: str = "auto"  # auto: fp16 on CUDA, none elsewhere; frozen weights in it, LoRA in fp32
    gradient_checkpointing: bool = False
    checkpoint_every: int = 250  # 0: only the final checkpoint
    keep_checkpoints: int | None = 2  # None: keep all
    validation_iterations: tuple[int, ...] = ()  # after these many iterations, write validation images
    validation_steps: int = 25
    validation_guidance_scale: float = 7.5
    validation_seed: int = 0
    save_content: bool = False  # also export the content adapter (content/style.safetensors)

    @property
    def style_prompt(self) -> str:
        return style_prompt(self.content_prompt, self.style_word)

    @classmethod
    def parity(cls, **overrides) -> "PairCustomizationConfig":
        """The official script's data pipeline: random crop and an always-applied horizontal flip (spec §3.6)."""
        return cls(**{"center_crop": False, "flip_probability": 1.0, **overrides})

    def validate(self) -> None:
        if not self.style_word.strip():
            raise InputError("the style word must not be empty (e.g. --style 'digital illustration')")
        if not re.search(rf"(^|\W){re.escape(self.token)}(\W|$)", self.content_prompt):
            raise InputError(f"the content prompt must contain the identifier token {self.token!r}: "
                             f"{self.content_prompt!r}")
        if self.iterations < 1 or self.style_start < 0:
            raise InputError("iterations must be >= 1 and style_start >= 0")
        if self.style_start >= self.iterations:
            raise InputError(f"style_start ({self.style_start}) must be below iterations ({self.iterations}): "
                             "the style adapter would never be trained")
        if self.content_rank < 1 or self.style_rank < 1:
            raise InputError("ranks must be >= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"mixed_precision must be one of {MIXED_PRECISION}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise InputError("flip_probability must be in [0, 1]")
        V.check_all(lr=(self.lr, V.positive), weight_decay=(self.weight_decay, V.non_negative),
                    adam_beta1=(self.adam_beta1, V.Number(float, 0, 0.999999)),
                    adam_beta2=(self.adam_beta2, V.Number(float, 0, 0.999999)), adam_eps=(self.adam_eps, V.positive),
                    max_grad_norm=(self.max_grad_norm, V.optional_positive), resolution=(self.resolution, V.side),
                    content_alpha=(self.content_alpha, V.optional_positive),
                    style_alpha=(self.style_alpha, V.optional_positive),
                    checkpoint_every=(self.checkpoint_every, V.non_negative_int),
                    keep_checkpoints=(self.keep_checkpoints, V.Number(int, 0, optional=True)),
                    validation_steps=(self.validation_steps, V.steps),
                    validation_guidance_scale=(self.validation_guidance_scale, V.finite))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"], d["validation_iterations"] = list(self.targets), list(self.validation_iterations)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PairCustomizationConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["targets"] = tuple(d.get("targets", DEFAULT_TARGETS))
        d["validation_iterations"] = tuple(d.get("validation_iterations", ()))
        return cls(**d)


@dataclass
class PairBatch:
    """One iteration's draws: both noisy latents share t and eps (spec §3.4)."""

    t: torch.Tensor
    noise: torch.Tensor
    noisy_content: torch.Tensor
    noisy_style: torch.Tensor


@dataclass
class TrainResult:
    style: StyleAdapter
    output_dir: Path | None
    history: list[dict] = field(default_factory=list)  # per iteration: {"iteration", "content_loss", "style_loss"}
    content: StyleAdapter | None = None


class PairCustomizationTrainer:
    """Trains a style from one (content, stylized) image pair on ``pipe``'s UNet (its modules stay untouched).

    ``pipe`` is any :class:`StyleforgePipeline` (SD 1.x or SDXL). With mixed precision the frozen UNet and text
    encoders are cast to fp16/bf16 in place (the VAE stays fp32); the adapters are fp32.
    """

    def __init__(self, pipe: StyleforgePipeline, config: PairCustomizationConfig | None = None, **overrides):
        config = dataclasses.replace(config or PairCustomizationConfig(), **overrides)
        config.validate()
        self.pipe, self.config = pipe, config
        self.device = pipe._execution_device  # where offload hooks run the models (their weights may rest on the CPU)
        self.amp_dtype = self._amp_dtype()
        self.iteration = 0
        self.history: list[dict] = []
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self._prepare_model()
        self.adapters: UNetAdapters = attach_pair_adapters(
            pipe.unet, content_rank=config.content_rank, style_rank=config.style_rank, content_alpha=config.content_alpha,
            style_alpha=config.style_alpha, targets=config.targets, basis_seed=config.basis_seed,
            orthogonal=config.orthogonal, seed=config.seed).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.adapters.trainable_parameters(CONTENT) + self.adapters.trainable_parameters(STYLE), lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, weight_decay=config.weight_decay)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.step_counts = {CONTENT: 0, STYLE: 0}
        self._data_ready = False

    # ------------------------------------------------------------------------------------------- setup

    def _amp_dtype(self) -> torch.dtype | None:
        mp = self.config.mixed_precision
        if mp == "auto":
            mp = "fp16" if self.device.type == "cuda" else "no"
        return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]

    def _prepare_model(self) -> None:
        pipe = self.pipe
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        if self.amp_dtype is not None:
            for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
                if module is not None:
                    module.to(dtype=self.amp_dtype)
        if pipe.vae.dtype != torch.float32:
            pipe.vae.to(dtype=torch.float32)  # the official code keeps the VAE in fp32
        if self.config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()

    def _autocast(self):
        if self.amp_dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def set_pair(self, content_image: ImageLike, style_image: ImageLike) -> None:
        """Preprocess the pair (spec §3.6) and encode the prompts (once; the text encoders are frozen)."""
        cfg = self.config
        content = load_image(content_image, name="content image")
        styled = load_image(style_image, name="styled image")
        sizes = {"content": (content.height, content.width), "style": (styled.height, styled.width)}
        res = cfg.resolution
        factor = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        if res % factor:
            raise InputError(f"resolution must be a multiple of {factor} for this model, got {res}")
        content, styled = (_resize_short_side(i, res) for i in (content, styled))
        if content.size != styled.size:  # the official code matches the content image to the style image's size
            content = content.resize(styled.size, Image.BILINEAR)
        self.pixels = torch.cat([pil_to_tensor(content), pil_to_tensor(styled)])  # (2, 3, H, W) in [-1, 1]
        self.image_hashes = [_hash(self.pixels[0]), _hash(self.pixels[1])]
        pipe = self.pipe
        cond_c = pipe.encode_prompt(cfg.content_prompt)
        cond_s = pipe.encode_prompt(cfg.style_prompt)
        if pipe.family == SDXL:  # micro-conditioning: (orig_h, orig_w, 0, 0, res, res) per image (spec §3.6 step 4)
            cond_c = dataclasses.replace(cond_c, time_ids=_time_ids(sizes["content"], res, cond_c.pooled))
            cond_s = dataclasses.replace(cond_s, time_ids=_time_ids(sizes["style"], res, cond_s.pooled))
        self.cond_content, self.cond_style = cond_c, cond_s
        # a deterministic crop/flip gives the same posterior every iteration: encode once, sample per iteration
        self._posterior = None if self._random_augmentation() else self._encode_posterior(self._augment())
        self._data_ready = True

    def _random_augmentation(self) -> bool:
        cfg = self.config
        crop_random = not cfg.center_crop and tuple(self.pixels.shape[-2:]) != (cfg.resolution, cfg.resolution)
        return crop_random or 0.0 < cfg.flip_probability < 1.0

    # ------------------------------------------------------------------------------------------- data

    def _augment(self) -> torch.Tensor:
        """Joint crop to resolution^2 and horizontal flip (same for both images)."""
        cfg, px, res = self.config, self.pixels, self.config.resolution
        h, w = px.shape[-2:]
        if cfg.center_crop or (h == res and w == res):
            top, left = (h - res) // 2, (w - res) // 2
        else:
            top = int(torch.randint(0, h - res + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, w - res + 1, (1,), generator=self.generator))
        px = px[:, :, top:top + res, left:left + res]
        if cfg.flip_probability >= 1.0 or (cfg.flip_probability > 0 and float(torch.rand(1, generator=self.generator)) < cfg.flip_probability):
            px = px.flip(-1)
        return px

    @torch.no_grad()
    def _encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def draw_batch(self) -> PairBatch:
        """The iteration's latents, t and eps, all drawn from the training generator (in this order)."""
        mean, std = self._posterior if self._posterior is not None else self._encode_posterior(self._augment())
        if self.config.vae_sample:
            z = mean + std * torch.randn(mean.shape, generator=self.generator).to(mean.device)
        else:
            z = mean
        z = z * self.pipe.vae.config.scaling_factor
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=self.generator)
        noise = torch.randn(z[:1].shape, generator=self.generator).to(z.device)
        t = t.to(z.device)
        noisy = self.noise_scheduler.add_noise(z, noise.expand_as(z), t.expand(2))
        return PairBatch(t, noise, noisy[:1], noisy[1:])

    # ------------------------------------------------------------------------------------------- losses

    def _unet_loss(self, noisy: torch.Tensor, batch: PairBatch, cond: Conditioning) -> torch.Tensor:
        unet = self.pipe.unet
        with self._autocast():
            pred = unet(noisy.to(unet.dtype), batch.t, **cond.unet_kwargs(1)).sample
        return F.mse_loss(pred.float(), batch.noise.float())  # mean over all latent elements, fp32 (spec §3.1)

    def _scope(self, phase: str):
        """Adapters of a phase: content alone, or content (gradient stopped, Eq. 7) + style."""
        if phase == CONTENT:
            return self.adapters.active({CONTENT: 1.0})
        return self.adapters.active({CONTENT: 1.0, STYLE: 1.0}, detached=[CONTENT])

    def _phase_loss(self, phase: str, batch: PairBatch) -> torch.Tensor:
        if phase == CONTENT:
            return self._unet_loss(batch.noisy_content, batch, self.cond_content)
        return self._unet_loss(batch.noisy_style, batch, self.cond_style)

    def content_loss(self, batch: PairBatch) -> torch.Tensor:
        """L_content: the content adapter alone on the content latent and the V* prompt."""
        with self._scope(CONTENT):
            return self._phase_loss(CONTENT, batch)

    def combined_loss(self, batch: PairBatch) -> torch.Tensor:
        """L_combined: content (gradient stopped) + style adapters on the style latent and the style prompt."""
        with self._scope(STYLE):
            return self._phase_loss(STYLE, batch)

    def optimization_step(self, phase: str, batch: PairBatch) -> torch.Tensor:
        """Forward, backward and one AdamW step of ``phase``; returns the loss.

        The backward pass runs inside the phase's adapter scope so that gradient checkpointing, which re-runs the
        forward during backward, sees the same active adapters.
        """
        opt, scaler = self.optimizer, self.scaler
        with self._scope(phase):
            loss = self._phase_loss(phase, batch)
            stop_if_diverged({phase: loss.detach()}, self.iteration + 1)
            (scaler.scale(loss) if scaler else loss).backward()
        if self.config.max_grad_norm:
            if scaler:
                scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient: each step moves one adapter
        self.step_counts[phase] += 1
        return loss.detach()

    def train_iteration(self) -> dict:
        """Iteration ``self.iteration`` of spec §3.8; returns its losses."""
        if not self._data_ready:
            raise RuntimeError("call set_pair(content_image, style_image) first")
        k = self.iteration
        batch = self.draw_batch()
        record = {"iteration": k, "content_loss": float(self.optimization_step(CONTENT, batch))}
        if k >= self.config.style_start:
            record["style_loss"] = float(self.optimization_step(STYLE, batch))
        self.iteration += 1
        self.history.append(record)
        return record

    # ------------------------------------------------------------------------------------------- the run

    def train(self, content_image: ImageLike, style_image: ImageLike, output_dir: str | Path | None = None, *,
              resume: str | Path | bool | None = None, overwrite: bool = False, progress: bool = True,
              stop_at: int | None = None) -> TrainResult:
        """Train for ``config.iterations`` iterations (or until ``stop_at``), checkpointing into ``output_dir``.

        ``resume``: True/"latest" continues from the newest checkpoint in ``output_dir/checkpoints``, a path from
        that checkpoint folder. ``stop_at`` ends the run early after that many iterations (a time-sliced job); the
        last checkpoint then lets ``resume`` finish it.
        """
        cfg = self.config
        out = Path(output_dir) if output_dir is not None else None
        if out is not None:
            _check_output_dir(out, resume=bool(resume), overwrite=overwrite)
        self.set_pair(content_image, style_image)
        if resume:
            if out is None and resume in (True, "latest"):
                raise InputError("resume needs the output folder that holds the checkpoints")
            self.load_checkpoint(latest_checkpoint(out) if resume in (True, "latest") else Path(resume))
        end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
        bar = _progress(total=cfg.iterations, initial=self.iteration, enabled=progress)
        try:
            while self.iteration < end:
                record = self.train_iteration()
                bar.update(1)
                bar.set_postfix({"content": f"{record['content_loss']:.4f}",
                                 **({"style": f"{record['style_loss']:.4f}"} if "style_loss" in record else {})})
                done = self.iteration
                if out is not None and done in cfg.validation_iterations:
                    self.save_validation(out / "validation" / f"iter-{done:06d}.png")
                if out is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                        or done == end):
                    self.save_checkpoint(out / CHECKPOINTS / f"iter-{done:06d}")
        finally:
            bar.close()
        result = TrainResult(self.style_adapter(), out, list(self.history),
                             self.export(CONTENT) if cfg.save_content else None)
        if out is not None and self.iteration >= cfg.iterations:
            result.style.save(out)
            if result.content is not None:
                result.content.save(out / CONTENT_DIR)  # its own folder: the style folder keeps one LoRA file
            with atomic_write(out / "losses.json") as tmp:
                tmp.write_text(json.dumps(self.history))
        return result

    # ------------------------------------------------------------------------------------------- export

    def export(self, adapter: str = STYLE) -> StyleAdapter:
        """The adapter's tensors (fp32 copies) and the metadata of spec §3.10."""
        from .. import __version__
        import diffusers

        cfg = self.config
        rank = cfg.style_rank if adapter == STYLE else cfg.content_rank
        alpha = cfg.style_alpha if adapter == STYLE else cfg.content_alpha
        base = self.pipe.model_id
        if Path(base).is_dir():  # a local folder: absolute, so `pair apply` finds it from anywhere
            base = str(Path(base).resolve())
        meta = {
            "adapter": adapter, "base_model": base, "family": self.pipe.family,
            "style_word": cfg.style_word, "token": cfg.token, "content_prompt": cfg.content_prompt,
            "style_prompt": cfg.style_prompt, "rank": rank, "alpha": float(rank if alpha is None else alpha),
            "content_rank": cfg.content_rank, "style_rank": cfg.style_rank, "targets": list(cfg.targets),
            "basis_seed": cfg.basis_seed, "orthogonal": cfg.orthogonal, "iterations_trained": self.iteration,
            "training": cfg.to_json(), "image_hashes": getattr(self, "image_hashes", None),
            "styleforge": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        }
        tensors = {k: (a.float().cpu().clone(), b.float().cpu().clone()) for k, (a, b) in self.adapters.tensors(adapter).items()}
        return StyleAdapter(tensors, meta)

    def style_adapter(self) -> StyleAdapter:
        return self.export(STYLE)

    # ------------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, folder: str | Path) -> Path:
        """adapters.safetensors (both adapters, A and B), state.pt (optimizer, scaler, RNG states), state.json."""
        tensors = {}
        for name in (CONTENT, STYLE):
            for mod, (a, b) in self.adapters.tensors(name).items():
                tensors[f"{name}.{mod}.lora_A.weight"] = a.cpu().clone(memory_format=torch.contiguous_format)  # own storage (safetensors)
                tensors[f"{name}.{mod}.lora_B.weight"] = b.cpu().clone(memory_format=torch.contiguous_format)
        stop_if_weights_diverged(tensors, self.iteration)

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / "adapters.safetensors"))
            state = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                     "torch_rng": torch.get_rng_state()}
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            torch.save(state, tmp / "state.pt")
            info = {"iteration": self.iteration, "step_counts": self.step_counts, "history": self.history,
                    "config": self.config.to_json(), "image_hashes": self.image_hashes, "model": self.pipe.model_id,
                    "family": self.pipe.family}
            (tmp / "state.json").write_text(json.dumps(info))

        folder = Path(folder)
        with atomic_folder(folder) as tmp:
            fill(tmp)
        self._prune_checkpoints(folder.parent)
        return folder

    def _prune_checkpoints(self, root: Path) -> None:
        keep = self.config.keep_checkpoints
        if keep is None:
            return
        for old in _checkpoints(root)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore adapters, optimizer, scaler and RNG states; refuse a checkpoint of different settings or images."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "state.json").read_text())
            tensors = load_file(str(folder / "adapters.safetensors"))
            state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise InputError(f"not a PairCustomization checkpoint (missing files): {folder}") from None
        except Exception:  # truncated files, non-JSON state, a pickle that is not plain tensors (weights_only)
            raise InputError(f"checkpoint {folder} is damaged (state.json, adapters.safetensors or state.pt cannot be "
                             "read)") from None
        saved = PairCustomizationConfig.from_json(info["config"])
        diffs = [f for f in RESULT_FIELDS if getattr(saved, f) != getattr(self.config, f)]
        if diffs:
            f = diffs[0]
            raise InputError(f"cannot resume: the checkpoint was trained with {f}={getattr(saved, f)!r}, this run has "
                             f"{getattr(self.config, f)!r} ({len(diffs)} setting(s) differ)")
        if info.get("family") != self.pipe.family:
            raise InputError(f"cannot resume: the checkpoint is for a {info.get('family')} model, this is {self.pipe.family}")
        if info.get("image_hashes") != self.image_hashes:
            raise InputError("cannot resume: the checkpoint was trained on a different image pair")
        if info["iteration"] > self.config.iterations:
            raise InputError(f"cannot resume: the checkpoint is at iteration {info['iteration']}, beyond iterations="
                             f"{self.config.iterations}")
        with torch.no_grad():
            for name in (CONTENT, STYLE):
                for mod, lora in zip(self.adapters.names, self.adapters.loras(name)):
                    lora.down.copy_(tensors[f"{name}.{mod}.lora_A.weight"])
                    lora.up.copy_(tensors[f"{name}.{mod}.lora_B.weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.iteration = int(info["iteration"])
        self.history = list(info["history"])
        self.step_counts = dict(info["step_counts"])

    # ------------------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validation_images(self) -> list[Image.Image]:
        """[content prompt with the content adapter, style prompt with both adapters] by DDIM (spec §3.7)."""
        from ..diffusion.sampling import ddim_sample, noise_predictor, timesteps_for

        cfg, pipe = self.config, self.pipe
        sched = pipe.ddim_scheduler
        steps = cfg.validation_steps
        res = cfg.resolution
        shape = (1, pipe.unet.config.in_channels, res // pipe.vae_scale_factor, res // pipe.vae_scale_factor)
        x_T = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(cfg.validation_seed)).to(self.device)
        uncond = pipe.encode_prompt("", negative=True, height=res, width=res)
        images = []
        for cond, scales in ((self.cond_content, {CONTENT: 1.0}), (self.cond_style, {CONTENT: 1.0, STYLE: 1.0})):
            eps_fn = noise_predictor(pipe.unet, cond, uncond=uncond, guidance_scale=cfg.validation_guidance_scale)
            with self.adapters.active(scales), self._autocast():
                x0 = ddim_sample(lambda x, t: eps_fn(x.to(pipe.unet.dtype), t).float(), x_T, sched,
                                 timesteps_for(sched, steps), steps)
            images += pipe.to_pil(pipe.decode_latents(x0.float().to(pipe.vae.dtype)))
        return images

    def save_validation(self, path: Path) -> Path:
        images = self.validation_images()
        meta = {"method": "pair-customization-validation", "iteration": self.iteration,
                "prompts": [self.config.content_prompt, self.config.style_prompt]}
        return save_image(make_strip(images), path, metadata=meta, overwrite=True)


# ----------------------------------------------------------------------------------------------- helpers


def _resize_short_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.BILINEAR) if new != img.size else img


def _time_ids(orig_hw: tuple[int, int], res: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[orig_hw[0], orig_hw[1], 0, 0, res, res]], dtype=like.dtype, device=like.device)


def _hash(t: torch.Tensor) -> str:
    from ..diffusion.inversion import image_hash

    return image_hash(t)


def _checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"iter-\d{6}", p.name))


def latest_checkpoint(output_dir: Path) -> Path:
    found = _checkpoints(Path(output_dir) / CHECKPOINTS)
    if not found:
        raise InputError(f"nothing to resume: no checkpoint in {Path(output_dir) / CHECKPOINTS}")
    return found[-1]


def _check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs in one folder before any work is done."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"the style output must be a folder, got a file: {out}")
    if resume or overwrite:
        if overwrite and not resume and (out / CHECKPOINTS).exists():
            shutil.rmtree(out / CHECKPOINTS)
        return
    if (out / STYLE_WEIGHTS).exists():
        raise OutputError(f"a style already exists in {out} (pass --resume to train it further with more --iterations, "
                          "or --overwrite to replace it)")
    if _checkpoints(out / CHECKPOINTS):
        raise OutputError(f"{out} holds checkpoints of an earlier run: pass --resume to continue it or --overwrite")


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="pair training", unit="it", file=sys.stderr, dynamic_ncols=True)


def train_pair_customization(pipe: StyleforgePipeline, content_image: ImageLike, style_image: ImageLike,
                             output_dir: str | Path | None = None, *, config: PairCustomizationConfig | None = None,
                             resume: str | Path | bool | None = None, overwrite: bool = False, progress: bool = True,
                             **overrides) -> TrainResult:
    """One call: build a :class:`PairCustomizationTrainer` and train (``overrides`` are config fields)."""
    trainer = PairCustomizationTrainer(pipe, config, **overrides)
    return trainer.train(content_image, style_image, output_dir, resume=resume, overwrite=overwrite, progress=progress)
