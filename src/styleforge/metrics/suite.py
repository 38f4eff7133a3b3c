"""The metrics a comparison report computes, and the networks they need.

A :class:`MetricSuite` holds the metric networks, loads each one on first use and remembers which could not be
loaded (and why), so a report shows the metrics whose weights are available and says what is missing. Networks
can be injected (``nets={"vgg19": my_net}``) and ``mode="random"`` builds randomly initialised networks of the
same families — smoke tests and demos only: the numbers then mean nothing.

Which images each metric compares (every image at the comparison's working size):

- ``ssim``, ``psnr``, ``lpips``, ``structure``, ``identity``: content input vs output (structure / content kept);
- ``gram``, ``dreamsim``: reference vs output (appearance / style taken);
- ``artfid``: the set of outputs vs the set of references (each output's own reference, spec osasis §10.12), with
  LPIPS-Alex to the content inputs; ``fid``: outputs vs references, pytorch-fid Inception.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ModelNotFoundError

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    better: str  # HIGHER or LOWER
    against: str  # "content", "reference", or "set"
    nets: tuple[str, ...]  # keys of MetricSuite networks it needs
    convention: str


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("ssim", "SSIM", HIGHER, "content", (), "Gaussian 11/1.5, 0-255, mean over RGB (Wang 2004)"),
    MetricSpec("psnr", "PSNR (dB)", HIGHER, "content", (), "20·log10(255/RMSE) on 8-bit values"),
    MetricSpec("lpips", "LPIPS-Alex", LOWER, "content", ("lpips_alex",), "lpips v0.1, AlexNet, inputs in [-1,1]"),
    MetricSpec("gram", "Gram (VGG19)", LOWER, "reference", ("vgg19",),
               "relu1_1..relu5_1, ImageNet norm, G=FFᵀ/(CHW), sum of Frobenius norms (CIA spec §10.13)"),
    MetricSpec("structure", "DINO structure dist", LOWER, "content", ("dino_vitb8",),
               "MSE of DINO ViT-B/8 block-11 key self-similarity, short side 224 (Splice)"),
    MetricSpec("dreamsim", "DreamSim", LOWER, "reference", ("dreamsim",),
               "1 − cos of the DreamSim v0.1 ensemble embedding (DINO + CLIP + OpenCLIP ViT-B/16 with LoRA), 224²"),
    MetricSpec("identity", "ID sim (ArcFace)", HIGHER, "content", ("arcface",),
               "IR-SE50, pooled to 256², crop [35:223, 32:220], pooled to 112² (pSp protocol)"),
    MetricSpec("fid", "FID", LOWER, "set", ("fid_inception",), "pytorch-fid Inception pool3, 299², outputs vs references"),
    MetricSpec("artfid", "ArtFID", LOWER, "set", ("art_inception", "lpips_alex"),
               "(1+LPIPS-Alex(content,out))·(1+FID_art(references,outputs)), finite N"),
)}
DEFAULT_METRICS = ("ssim", "psnr", "lpips", "gram", "structure", "dreamsim", "artfid")


def _tiny_vit(patch: int):
    from .nets.vit import VisionTransformer

    return VisionTransformer(patch_size=patch, embed_dim=48, depth=2, num_heads=4)


def _variance_preserving(net):
    """He-initialise the convolutions: with PyTorch's default init the activations of a deep random Inception
    fade to ~0 and every random-mode FID would read 0."""
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


def _builders(weights: dict, offline) -> dict[str, tuple[Callable, Callable]]:
    """key -> (pretrained builder, random builder)."""
    from . import dreamsim as ds
    from . import fid, gram, identity, lpips, structure
    from .nets.irse import IRSE50
    from .nets.vgg import vgg19

    w = weights.get
    return {
        "lpips_alex": (lambda: lpips.LPIPS.from_pretrained("alex", backbone_weights=w("alexnet"), heads_weights=w("lpips-alex"), offline=offline),
                       lambda: lpips.LPIPS.build("alex")),
        "vgg19": (lambda: gram.build_vgg19(w("vgg19"), offline=offline), lambda: vgg19().eval()),
        "dino_vitb8": (lambda: structure.build_dino_vitb8(w("dino-vitb8"), offline=offline), lambda: _tiny_vit(8).eval()),
        "dreamsim": (lambda: ds.DreamSim.from_pretrained(w("dreamsim"), dino_weights=w("dino-vitb16"), offline=offline),
                     lambda: ds.DreamSim([ds.DinoBranch(_tiny_vit(16))])),
        "arcface": (lambda: identity.build_arcface(w("arcface"), offline=offline), lambda: IRSE50().eval()),
        "fid_inception": (lambda: fid.build_fid_inception(w("fid-inception"), offline=offline),
                          lambda: _variance_preserving(fid.build_fid_inception(pretrained=False))),
        "art_inception": (lambda: fid.build_art_inception(w("art-inception"), offline=offline),
                          lambda: _variance_preserving(fid.build_art_inception(pretrained=False))),
    }


@dataclass
class MetricSuite:
    """Networks for the metrics, loaded lazily. ``mode``: "pretrained" (published weights) or "random"."""

    mode: str = "pretrained"
    weights: dict = field(default_factory=dict)  # weight key (see metrics.weights) -> file / folder / hub id
    nets: dict = field(default_factory=dict)  # injected or loaded networks
    offline: bool | None = None
    unavailable: dict = field(default_factory=dict)  # net key -> reason

    def __post_init__(self):
        if self.mode not in ("pretrained", "random"):
            raise ValueError(f"mode must be 'pretrained' or 'random', got {self.mode!r}")

    def net(self, key: str):
        if key in self.nets:
            return self.nets[key]
        if key in self.unavailable:
            return None
        pretrained, random = _builders(self.weights, self.offline)[key]
        try:
            if self.mode == "random":
                torch.manual_seed(0)  # the same random networks for every method in a report
                net = random()
            else:
                net = pretrained()
        except ModelNotFoundError as e:
            self.unavailable[key] = str(e)
            return None
        self.nets[key] = net.eval().requires_grad_(False)
        return self.nets[key]

    def available(self, metric: str) -> bool:
        return all(self.net(k) is not None for k in METRICS[metric].nets)

    def why_unavailable(self, metric: str) -> str:
        return "; ".join(self.unavailable[k] for k in METRICS[metric].nets if k in self.unavailable)

    # ---- computing
    def per_pair(self, metric: str, content: torch.Tensor, reference: torch.Tensor, output: torch.Tensor) -> list[float]:
        """Per-image values of a pair metric (tensors (B, 3, H, W) in [-1, 1] of equal size)."""
        from . import pixel
        from .dreamsim import dreamsim_distance
        from .gram import gram_distance
        from .identity import identity_similarity
        from .lpips import lpips_distance
        from .structure import structure_distance

        small = self.mode == "random"  # random networks: skip the conventions' large working sizes
        if metric == "ssim":
            values = pixel.ssim(content, output)
        elif metric == "psnr":
            values = pixel.psnr(content, output)
        elif metric == "lpips":
            values = lpips_distance(content, output, net=self.net("lpips_alex"))
        elif metric == "gram":
            values = gram_distance(output, reference, net=self.net("vgg19"), size=None if small else 512)
        elif metric == "structure":
            values = structure_distance(content, output, net=self.net("dino_vitb8"), short_side=64 if small else 224)
        elif metric == "dreamsim":
            values = dreamsim_distance(reference, output, model=self.net("dreamsim"))
        elif metric == "identity":
            values = identity_similarity(content, output, net=self.net("arcface"))
        else:
            raise ValueError(f"{metric} is not a per-pair metric")
        return [float(v) for v in values]

    def set_level(self, metric: str, contents: torch.Tensor, references: torch.Tensor, outputs: torch.Tensor) -> dict:
        from . import fid as F

        resize = 96 if self.mode == "random" else 299  # random networks: a smaller Inception input, for speed
        if outputs.shape[0] < 2:
            return {"value": math.nan, "note": "needs at least 2 images"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-sample caveat is printed in the report instead
            if metric == "fid":
                net = self.net("fid_inception")
                value = F.fid_from_features(F.inception_features(net, references, resize=resize),
                                           F.inception_features(net, outputs, resize=resize))
                return {"value": value, "n": int(outputs.shape[0])}
            if metric == "artfid":
                result = F.art_fid(outputs, references, contents, inception=self.net("art_inception"), lpips=self.net("lpips_alex"), resize=resize)
                return {"value": result["art_fid"], "fid": result["fid"], "content_lpips": result["content_lpips"], "n": result["n"]}
        raise ValueError(f"{metric} is not a set metric")
