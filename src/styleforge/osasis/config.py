"""OSASIS stage-1 settings and loss weights: plain dataclasses without torch, so ``styleforge oneshot train
--help`` shows their defaults without loading the networks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import InputError

SPN_KINDS = ("time", "plain", "none")


@dataclass
class LossWeights:
    """Eq. 26 weights (paper = official code)."""

    cross: float = 1.0
    in_domain: float = 0.5
    recon_l1: float = 10.0
    recon_lpips: float = 10.0
    recon_clip: float = 30.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig:
    """Stage-1 settings. Defaults: the released recipe (official ``utils/args.py``: decode 10 steps from t = 450
    after encoding to t = 500, SPN fed the grid index). The spec §10 recommendations for newly trained models are
    the switch ``plan="consistent"``, ``spn_time_input="timestep"`` (decode from t0 itself; SPN fed the timestep)."""

    iterations: int = 200
    batch_size: int = 8
    lr: float = 5e-6
    spn_lr: float = 1e-4
    t0_ratio: float = 0.5
    encode_steps: int = 50
    decode_steps: int = 20
    plan: str = "official"
    spn: str = "time"
    spn_time_input: str = "grid_index"
    spn_weight: float = 0.1
    style_spn_weight: float = 1.0  # official 1.0; the paper's reading uses spn_weight in both branches
    zero_init_spn: bool = False
    latent_steps: int = 200
    content_steps: int = 20
    clamp: bool = True
    dropout: bool = True  # eps_B stays in train mode (dropout 0.1) as in the official code
    weights: LossWeights = field(default_factory=LossWeights)
    clip_recon: str = "cosine"
    seed: int = 0
    checkpoint_every: int = 50
    sample_every: int = 50
    keep_checkpoints: int = 2
    autocast: str | None = None  # "bf16" / "fp16": eps_B and SPN forward under autocast (weights and Adam stay fp32)
    gradient_checkpointing: bool = False  # recompute eps_B activations in backward: less memory, ~30% more time

    def __post_init__(self):
        if isinstance(self.weights, dict):
            self.weights = LossWeights(**self.weights)
        if self.spn not in SPN_KINDS:
            raise InputError(f"SPN kind must be one of {SPN_KINDS}, got {self.spn!r}")
        from .schedule import SPN_TIME_INPUTS

        if self.spn_time_input not in SPN_TIME_INPUTS:
            raise InputError(f"SPN time input must be one of {SPN_TIME_INPUTS}, got {self.spn_time_input!r}")
        from .. import validation as V

        for name in ("iterations", "batch_size", "latent_steps", "content_steps", "encode_steps", "decode_steps"):
            V.count.check(getattr(self, name), name)
        for name in ("lr", "spn_lr"):
            V.positive.check(getattr(self, name), name)
        V.check_all(spn_weight=(self.spn_weight, V.non_negative), style_spn_weight=(self.style_spn_weight, V.non_negative),
                    **{f"weights.{k}": (v, V.non_negative) for k, v in vars(self.weights).items()})
        for name in ("checkpoint_every", "sample_every", "keep_checkpoints"):
            V.non_negative_int.check(getattr(self, name), name)
        V.open_fraction.check(self.t0_ratio, "t0_ratio")
        if self.autocast not in (None, "bf16", "fp16"):
            raise InputError(f"autocast must be bf16, fp16 or off, got {self.autocast!r}")
        self.timestep_plan()  # validates the plan now, not after the models are loaded

    def timestep_plan(self):
        from .schedule import TimestepPlan

        return TimestepPlan(self.t0_ratio, self.encode_steps, self.decode_steps, self.plan)

    def to_dict(self) -> dict:
        return asdict(self)
