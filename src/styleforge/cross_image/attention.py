"""The cross-image attention layer (paper Eqs. 2-3, appendix Eq. 6) as a hook on the shared attention controller.

The batch is laid out in triplets [OUT, APP, STRUCT] (one triplet per guidance branch). In the selected decoder
self-attention layers the OUT rows keep their queries and attend to the keys and values of the APP rows (or of the
STRUCT rows on structure-injection steps); the map is contrasted before it multiplies the values. APP and STRUCT
rows always run plain self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..diffusion.attention import AttentionCall, AttentionLayer, attention_probs, explicit_attention

OUT, APP, STRUCT = 0, 1, 2


def contrast_attention(probs: torch.Tensor, beta: float, clip: bool = True) -> torch.Tensor:
    """Eq. 3: A <- (A - mean(A)) * beta + mean(A), the mean over keys.

    The official code then clips to [0, 1] without renormalising, which zeroes weak keys and lets rows sum to more
    than 1 (``clip=True``, the default, reproduces it). beta = 1 is the identity.
    """
    if beta == 1.0:
        return probs
    mean = probs.mean(dim=-1, keepdim=True)
    out = (probs - mean) * beta + mean
    return out.clamp(0.0, 1.0) if clip else out


@dataclass
class CrossImageAttentionHook:
    """Swaps OUT's keys/values for APP's (or STRUCT's) in the chosen layers, when the loop's state says so.

    The loop sets, per UNet pass, ``state["swap_factors"]`` (the layer resolutions whose window is open, empty for a
    plain pass), ``state["inject"]`` (use STRUCT instead of APP) and ``state["capture"]``.
    """

    factors: tuple[int, ...]  # the decoder self-attention resolutions that may swap (SD 1.x: (1, 2))
    beta: float = 1.67
    clip: bool = True
    chunk_size: int | None = None
    log: list = field(default_factory=list)  # (layer name, source row) per swap, for tests and the activity log
    record: bool = False

    def selector(self, layer: AttentionLayer) -> bool:
        return layer.place == "up" and layer.kind == "self" and layer.factor in self.factors

    def active(self, layer: AttentionLayer, state: dict) -> bool:
        return layer.factor in state.get("swap_factors", ())

    def __call__(self, call: AttentionCall) -> None:
        state = call.controller.state
        if call.layer.factor not in state.get("swap_factors", ()):
            return
        q, k, v = call.query, call.key, call.value
        b = q.shape[0]
        if b % 3:
            raise ValueError(f"cross-image attention expects [OUT, APP, STRUCT] triplets, got a batch of {b}")
        source = STRUCT if state.get("inject") else APP
        out_rows = torch.arange(OUT, b, 3, device=q.device)
        src_rows = torch.arange(source, b, 3, device=q.device)
        other_rows = torch.tensor([r for r in range(b) if r % 3 != OUT], device=q.device)
        # APP and STRUCT rows: plain self-attention (fused); OUT rows: against the source image, contrasted
        plain = F.scaled_dot_product_attention(q[other_rows], k[other_rows], v[other_rows])
        crossed = explicit_attention(q[out_rows], k[src_rows], v[src_rows], call.scale, chunk_size=self.chunk_size,
                                     probs_fn=lambda p: contrast_attention(p, self.beta, self.clip))
        result = torch.empty_like(q).index_copy(0, other_rows, plain).index_copy(0, out_rows, crossed.to(q.dtype))
        call.output = result
        if self.record:
            self.log.append((call.layer.name, "struct" if source == STRUCT else "app"))


@dataclass
class SegmentationCapture:
    """Keeps, head-averaged, the maps self-segmentation needs from the APP and STRUCT rows of one pass.

    ``self_factor``: the finest decoder self-attention (pixel features); ``cross_factor``: the decoder text
    cross-attention one level coarser (noun maps). The last layer of each kind wins, as in the official code.
    """

    self_factor: int
    cross_factor: int
    self_maps: torch.Tensor | None = None  # (2, N, N)   rows APP, STRUCT
    cross_maps: torch.Tensor | None = None  # (2, n, 77)

    def selector(self, layer: AttentionLayer) -> bool:
        return layer.place == "up" and (
            (layer.kind == "self" and layer.factor == self.self_factor)
            or (layer.kind == "cross" and layer.factor == self.cross_factor))

    def active(self, layer: AttentionLayer, state: dict) -> bool:
        return bool(state.get("capture"))

    def __call__(self, call: AttentionCall) -> None:
        if not call.controller.state.get("capture"):
            return
        rows = torch.tensor([APP, STRUCT], device=call.query.device)
        q, k = call.query[rows], call.key[rows]
        maps = 0
        for h in range(q.shape[1]):  # one head at a time: peak memory of one (2, Nq, Nk) map, not all heads'
            maps = maps + attention_probs(q[:, h], k[:, h], call.scale).float()
        maps = maps / q.shape[1]
        if call.layer.kind == "self":
            self.self_maps = maps
        else:
            self.cross_maps = maps
