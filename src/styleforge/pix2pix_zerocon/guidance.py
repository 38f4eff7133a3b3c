"""Recording the reference trajectory and comparing the edited one against it (spec §3.5-3.7).

:class:`GuidanceProbe` installs hooks through the shared :class:`~styleforge.diffusion.attention.AttentionController`:

* on every cross-attention layer it computes the attention probabilities explicitly in fp32 (so they can be
  stored and differentiated) and uses them for the layer's output, in every pass, so the reference, the guided
  and the noise forwards compute identical maps for identical inputs;
* on the chosen feature layers (self-attention outputs after their output projection, or down-block ResNet
  outputs) it pools the features into p x p patches and samples S patch positions.

In ``record`` mode one reference step is written to a :class:`ReferenceStep` (maps, and only the sampled patch
rows with their ids); in ``compare`` mode the edited forward's maps and features are compared with those of a
given reference step, whose entries are popped as they are used, so nothing outlives its step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..diffusion.attention import AttentionCall, AttentionController, LayerSelector, attention_probs, tokens_to_grid
from ..errors import InputError
from .losses import PatchNCESettings, cross_attention_loss, patch_nce_loss, pool_patches, sample_patch_ids

#: PatchNCE feature sites (spec §3.7): encoder self-attention (default, the paper's text), decoder self-attention
#: (CDS), all self-attention layers, or the encoder's ResNet outputs (ZeCon-like)
CUT_LAYER_SETS = {
    "down_attn1": LayerSelector(places=("down",), kinds=("self",)),
    "up_attn1": LayerSelector(places=("up",), kinds=("self",)),
    "all_attn1": LayerSelector(kinds=("self",)),
    "down_resnet": None,
}

OFF, RECORD, COMPARE = "off", "record", "compare"


@dataclass
class ReferenceStep:
    """What one reference step leaves for the guided step at the same timestep."""

    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # attn2 name -> (B, heads, N, tokens)
    patches: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # -> (ids, rows)

    def __len__(self) -> int:
        return len(self.maps) + len(self.patches)


class GuidanceProbe:
    """Hooks that record a reference step or score an edited forward against one (L_c and L_e)."""

    def __init__(self, controller: AttentionController, *, record_maps: bool, cut_layers: str | None,
                 nce: PatchNCESettings, latent_hw: tuple[int, int], generator: torch.Generator | None = None,
                 store_device: torch.device | str | None = None):
        self.controller = controller
        self.nce = nce
        self.latent_hw = latent_hw
        self.generator = generator
        self.store_device = store_device
        self.mode = OFF
        self.record_to: ReferenceStep | None = None
        self.reference: ReferenceStep | None = None
        self.rows: list[int] | None = None  # reference batch rows matching the edited batch rows
        self.loss_xa: torch.Tensor | None = None
        self.loss_cut: torch.Tensor | None = None
        self._handles = []
        #: read reference entries without popping them: gradient checkpointing replays the compared forward in
        #: backward, and the replay must find (and do) exactly what the first pass did
        self.keep_reference = False
        #: set while the gradient is taken: a checkpointed replay redoes the loss ops (the replay must match the
        #: first pass op for op) but drops their results, or every replayed block's graph would stay alive to the end
        self.replaying = False
        self.cross_selector = LayerSelector(kinds=("cross",)) if record_maps else None
        self.feature_selector = None
        self.feature_layers: list[str] = []
        if cut_layers is not None:
            if cut_layers not in CUT_LAYER_SETS:
                raise InputError(f"unknown PatchNCE layer set {cut_layers!r}; use one of {sorted(CUT_LAYER_SETS)}")
            self.feature_selector = CUT_LAYER_SETS[cut_layers]
            if self.feature_selector is None:
                self._hook_resnets(controller.unet)
            else:
                self.feature_layers = [l.name for l in controller.select(self.feature_selector)]
            if not self.feature_layers:
                raise InputError(f"this UNet has no {cut_layers!r} layers for the contrastive loss")
        if self.cross_selector is not None:
            controller.add(_Hook(self.cross_selector, self._cross_attention))
        if self.feature_selector is not None:
            controller.add(_Hook(self.feature_selector, self._self_attention,
                                 active=lambda layer, state: self.mode != OFF))  # idle: the layer's own processor

    # ------------------------------------------------------------------------------------------- modes

    def record(self, step: ReferenceStep) -> "GuidanceProbe":
        self.mode, self.record_to, self.reference = RECORD, step, None
        return self

    def compare(self, step: ReferenceStep, rows: list[int]) -> "GuidanceProbe":
        self.mode, self.reference, self.rows, self.record_to = COMPARE, step, rows, None
        self.loss_xa = self.loss_cut = None
        return self

    def off(self) -> "GuidanceProbe":
        self.mode, self.record_to, self.reference = OFF, None, None
        return self

    def _take(self, entries: dict, key):
        return entries[key] if self.keep_reference else entries.pop(key)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------------------------------------- hooks

    def _cross_attention(self, call: AttentionCall) -> None:
        probs = attention_probs(call.query.float(), call.key.float(), call.scale, call.attention_mask)
        call.output = torch.matmul(probs.to(call.value.dtype), call.value)
        name = call.layer.name
        if self.mode == RECORD:
            self.record_to.maps[name] = probs.detach().to(self.store_device or probs.device)
        elif self.mode == COMPARE:
            ref = self._take(self.reference.maps, name)[self.rows]
            term = cross_attention_loss(probs, ref)
            if not self.replaying:
                self.loss_xa = term if self.loss_xa is None else self.loss_xa + term

    def _self_attention(self, call: AttentionCall) -> None:
        if self.mode == OFF:
            return  # the processor's own fused attention
        out = F.scaled_dot_product_attention(call.query, call.key, call.value, attn_mask=call.attention_mask)
        call.output = out
        b, heads, n, d = out.shape
        projected = call.attn.to_out[0](out.transpose(1, 2).reshape(b, n, heads * d).to(call.query.dtype))
        h, w = tokens_to_grid(n, self.latent_hw, call.layer.factor)
        self.observe(call.layer.name, projected.transpose(1, 2).reshape(b, -1, h, w))

    def _hook_resnets(self, unet) -> None:
        for i, block in enumerate(unet.down_blocks):
            for j, resnet in enumerate(block.resnets):
                name = f"down_blocks.{i}.resnets.{j}"
                self.feature_layers.append(name)
                self._handles.append(resnet.register_forward_hook(
                    lambda module, args, output, name=name: self.observe(name, output) if self.mode != OFF else None))

    def observe(self, name: str, features: torch.Tensor) -> None:
        """Record or compare the sampled patches of one layer's (B, C, h, w) features, for every patch size."""
        for size in self.nce.patch_sizes:
            pooled = pool_patches(features, int(size))  # (B, P, C) or None when the map is smaller than a patch
            if pooled is None:
                continue
            key = (name, int(size))
            if self.mode == RECORD:
                ids = sample_patch_ids(pooled.shape[1], self.nce.num_patches, self.generator)
                rows = pooled[:, ids.to(pooled.device)].detach().to(self.store_device or pooled.device)
                self.record_to.patches[key] = (ids, rows)
            else:
                ids, query = self._take(self.reference.patches, key)
                term = patch_nce_loss(query[self.rows].to(pooled.device), pooled[:, ids.to(pooled.device)], self.nce.tau)
                if not self.replaying:
                    self.loss_cut = term if self.loss_cut is None else self.loss_cut + term


@dataclass
class _Hook:
    selector: object
    fn: object
    active: object = None  # optional (layer, state) -> bool; None: always

    def __call__(self, call: AttentionCall) -> None:
        self.fn(call)
