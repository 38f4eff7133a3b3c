"""Attention control on diffusers' attention-processor interface.

:class:`AttentionController` installs a :class:`ControlledAttnProcessor` on the ``Attention`` modules its hooks
select, and leaves every other layer's processor (attention slicing, xformers, a user's own) alone. Each controlled
processor computes queries, keys and values exactly as diffusers' ``AttnProcessor2_0`` does, then hands them to the
hooks whose selector picks that layer. A hook may read or replace ``query``/``key``/``value``, read the attention
map (``call.probs()``), replace it (``call.edit_probs(fn)``), or set the output itself. While no hook acts on a layer
it runs the processor the layer had before, so the UNet's output is unchanged.

Layers are chosen by role (``down``/``mid``/``up``, ``self``/``cross``) and by their resolution *relative to the
latent*: ``factor`` 1 is the latent's own grid, 2 is half of it, and so on. Factors are read off the UNet's
block structure, so the same selector picks the same layers at any image size and on SD 1.x and SDXL alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F

PLACES = ("down", "mid", "up")
KINDS = ("self", "cross")


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # module path, e.g. "up_blocks.3.attentions.0.transformer_blocks.0.attn1"
    place: str  # "down" | "mid" | "up"
    block: int  # index of the down/up block it sits in (0 for mid)
    kind: str  # "self" | "cross"
    factor: int  # token grid = latent grid / factor


def attention_layers(unet) -> list[AttentionLayer]:
    """Every attention module of a diffusers ``UNet2DConditionModel``, in execution order, with its role and factor."""
    from diffusers.models.attention_processor import Attention

    factors: dict[str, tuple[str, int, int]] = {}  # block prefix -> (place, block index, factor)
    factor = 1
    for i, blk in enumerate(unet.down_blocks):
        factors[f"down_blocks.{i}."] = ("down", i, factor)
        if getattr(blk, "downsamplers", None):
            factor *= 2
    factors["mid_block."] = ("mid", 0, factor)
    for j, blk in enumerate(unet.up_blocks):
        factors[f"up_blocks.{j}."] = ("up", j, factor)
        if getattr(blk, "upsamplers", None):
            factor = max(1, factor // 2)
    layers = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        prefix = next((p for p in factors if name.startswith(p)), None)
        if prefix is None:
            continue
        place, block, f = factors[prefix]
        kind = "cross" if module.is_cross_attention else "self"
        layers.append(AttentionLayer(name, place, block, kind, f))
    return layers


@dataclass(frozen=True)
class LayerSelector:
    """Picks layers by place, kind and resolution factor (None = any)."""

    places: tuple[str, ...] = PLACES
    kinds: tuple[str, ...] = KINDS
    factors: tuple[int, ...] | None = None

    def __call__(self, layer: AttentionLayer) -> bool:
        return layer.place in self.places and layer.kind in self.kinds and (
            self.factors is None or layer.factor in self.factors)

    def pick(self, layers: Iterable[AttentionLayer]) -> list[AttentionLayer]:
        return [layer for layer in layers if self(layer)]


def finest_factors(layers: Iterable[AttentionLayer], place: str, kind: str, n: int) -> tuple[int, ...]:
    """The ``n`` highest resolutions (smallest factors) at which ``place``/``kind`` attention exists.

    SD 1.x decoder self-attention: (1, 2) -- the 64 and 32 grids of a 512 px image; SDXL has no attention at the
    latent's own grid, so it gives (2, 4).
    """
    return tuple(sorted({l.factor for l in layers if l.place == place and l.kind == kind})[:n])


class AttentionCall:
    """One attention computation, as a hook sees it. Tensors are split into heads: (batch, heads, tokens, dim)."""

    def __init__(self, layer, attn, query, key, value, attention_mask, controller):
        self.layer: AttentionLayer = layer
        self.attn = attn
        self.query: torch.Tensor = query
        self.key: torch.Tensor = key
        self.value: torch.Tensor = value
        self.attention_mask: torch.Tensor | None = attention_mask
        self.controller: AttentionController = controller
        self.output: torch.Tensor | None = None  # set by a hook to replace the attention result (B, heads, Nq, dim)
        self.probs_edits: list[Callable[[torch.Tensor], torch.Tensor]] = []

    @property
    def scale(self) -> float:
        return self.attn.scale

    def edit_probs(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the attention map by ``fn(map)`` (B, heads, Nq, Nk) before it multiplies the values.

        Edits from several hooks compose in order. The product is then computed explicitly (not fused).
        """
        self.probs_edits.append(fn)

    def _edited_output(self) -> torch.Tensor:
        def apply(p):
            for fn in self.probs_edits:
                p = fn(p)
            return p

        return explicit_attention(self.query, self.key, self.value, self.scale, mask=self.attention_mask, probs_fn=apply,
                                  chunk_size=self.controller.chunk_size)

    def probs(self) -> torch.Tensor:
        """The post-softmax map (B, heads, Nq, Nk) for the current query and key."""
        return attention_probs(self.query, self.key, self.scale, self.attention_mask)


class AttentionHook(Protocol):
    selector: Callable[[AttentionLayer], bool]

    def __call__(self, call: AttentionCall) -> None: ...

    # optional: ``active(layer, state) -> bool``, False while the hook would do nothing (the layer then runs the
    # processor it had before, e.g. the user's attention slicing)


def attention_probs(query, key, scale: float, mask=None) -> torch.Tensor:
    logits = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask
    return logits.softmax(dim=-1)


def explicit_attention(query, key, value, scale: float, *, mask=None,
                       probs_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       chunk_size: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v with an optional row-wise edit of the map, computed in query chunks.

    Chunking is exact for any ``probs_fn`` that acts on each query row alone, and bounds memory to
    chunk_size x Nk per head instead of Nq x Nk.
    """
    n = query.shape[-2]
    chunk = chunk_size or n
    outs = []
    for s in range(0, n, chunk):
        m = None if mask is None else mask[..., s:s + chunk, :] if mask.shape[-2] == n else mask
        p = attention_probs(query[..., s:s + chunk, :], key, scale, m)
        if probs_fn is not None:
            p = probs_fn(p)
        outs.append(torch.matmul(p.to(value.dtype), value))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


class ControlledAttnProcessor:
    """``AttnProcessor2_0`` with a hook point between the projections and the attention product."""

    def __init__(self, layer: AttentionLayer, controller: "AttentionController", fallback=None):
        self.layer = layer
        self.controller = controller
        self.fallback = fallback  # the layer's previous processor, used while no hook picks the layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        hooks = self.controller.hooks_for(self.layer)
        if not hooks and self.fallback is not None:
            extra = dict(kwargs, **({"temb": temb} if temb is not None else {}))  # e.g. sliced attention takes no temb
            return self.fallback(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **extra)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        split = lambda t: t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = None
        if hooks:
            call = AttentionCall(self.layer, attn, query, key, value, attention_mask, self.controller)
            for hook in hooks:
                hook(call)
            if call.output is None and call.probs_edits:
                call.output = call._edited_output()
            query, key, value, out = call.query, call.key, call.value, call.output
        if out is None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionController:
    """Installs controlled processors on the layers its hooks select and dispatches attention calls to the hooks.

    Use as a context manager (``with AttentionController(unet) as ctl: ctl.add(hook)``) or call
    :meth:`install`/:meth:`uninstall`. Only layers some hook selects get a :class:`ControlledAttnProcessor`; every
    other layer keeps the processor it had (attention slicing, SDPA variants, xformers, a user's own), and the
    controlled ones run their previous processor whenever no hook picks them. ``state`` is a free-form dict that
    a method's loop and its hooks share (step index, which pass is running), since diffusers drops unknown
    ``cross_attention_kwargs``. ``chunk_size`` computes explicit maps in query chunks of that many rows (the memory
    saver ``attention_chunk_size``).
    """

    def __init__(self, unet, chunk_size: int | None = None):
        self.unet = unet
        #: query rows per explicitly computed map (edited maps, hooks that ask): bounds their memory, exact
        self.chunk_size = chunk_size
        self.layers = attention_layers(unet)
        self.hooks: list = []
        self.state: dict = {}
        self._saved: dict | None = None  # layer name -> the processor it had before this controller took it

    def install(self) -> "AttentionController":
        if self._saved is None:
            self._saved = {}
            for hook in self.hooks:
                self._take(hook)
        return self

    def _take(self, hook) -> None:
        """Put a controlled processor on each layer ``hook`` selects that does not have one yet."""
        selector = getattr(hook, "selector", None)
        for layer in self.layers:
            if layer.name in self._saved or (selector is not None and not selector(layer)):
                continue
            module = self.unet.get_submodule(layer.name)
            self._saved[layer.name] = module.processor
            module.set_processor(ControlledAttnProcessor(layer, self, fallback=module.processor))

    def uninstall(self) -> None:
        if self._saved is not None:
            for name, processor in self._saved.items():
                self.unet.get_submodule(name).set_processor(processor)
            self._saved = None

    def __enter__(self) -> "AttentionController":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def add(self, hook):
        self.hooks.append(hook)
        if self._saved is not None:
            self._take(hook)
        return hook

    def remove(self, hook) -> None:
        self.hooks.remove(hook)

    def hooks_for(self, layer: AttentionLayer) -> list:
        """The hooks that act on ``layer`` now: selected by it, and not idle (a hook's optional
        ``active(layer, state)`` says False when it would leave this call alone)."""
        return [h for h in self.hooks if (getattr(h, "selector", None) is None or h.selector(layer))
                and (getattr(h, "active", None) is None or h.active(layer, self.state))]

    def select(self, selector: Callable[[AttentionLayer], bool]) -> list[AttentionLayer]:
        return [layer for layer in self.layers if selector(layer)]


@dataclass
class AttentionRecorder:
    """A hook that records which layers ran (in order) and, optionally, their head-averaged attention maps."""

    selector: Callable[[AttentionLayer], bool] = field(default_factory=LayerSelector)
    store_maps: bool = False
    calls: list[str] = field(default_factory=list)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def __call__(self, call: AttentionCall) -> None:
        self.calls.append(call.layer.name)
        if self.store_maps:
            self.maps[call.layer.name] = call.probs().mean(dim=1).detach()

    @property
    def layer_names(self) -> list[str]:
        return list(dict.fromkeys(self.calls))


def tokens_to_grid(n_tokens: int, latent_hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The (h, w) token grid of a layer at ``factor`` for a latent of size ``latent_hw`` (ceil division as the UNet's convs)."""
    h, w = (math.ceil(s / factor) for s in latent_hw)
    if h * w != n_tokens:
        raise ValueError(f"{n_tokens} tokens do not form a {h}x{w} grid")
    return h, w
