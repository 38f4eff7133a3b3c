"""VGG16/VGG19 (Simonyan & Zisserman 2015) and AlexNet (Krizhevsky et al. 2012, torchvision's "one weird trick"
variant), with torchvision's module layout: ``features.N`` for the convolution stack (N = index in the
``nn.Sequential``, ReLU and max-pool layers included) and ``classifier.N`` for the fully connected head.

Only the feature stacks are used by the metrics; the classifier is built when asked so the full torchvision file
can be checked key by key.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# torchvision's configurations "D" and "E": channel counts, "M" = 2x2 max-pool
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

#: ``features`` indices of the ReLU outputs, named as in the literature (relu{block}_{conv}).
VGG19_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13, "relu3_3": 15,
              "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26, "relu5_1": 29,
              "relu5_2": 31, "relu5_3": 33, "relu5_4": 35}
VGG16_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13, "relu3_3": 15,
              "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_2": 27, "relu5_3": 29}
ALEXNET_RELU = {"relu1": 1, "relu2": 4, "relu3": 7, "relu4": 9, "relu5": 11}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to ImageNet-normalised inputs ((x01 - mean) / std), as torchvision's models expect."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class TappedFeatures(nn.Module):
    """A ``features`` stack whose forward returns the outputs of chosen layers (and stops after the last one)."""

    features: nn.Sequential

    def forward_taps(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        wanted = sorted(set(taps))
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[i] = x
                if i == wanted[-1]:
                    break
        return [out[t] for t in taps]


class VGG(TappedFeatures):
    def __init__(self, config: Sequence = VGG16_CONFIG, *, classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        if classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                nn.Linear(4096, num_classes),
            )


class AlexNet(TappedFeatures):
    """torchvision's AlexNet (64-192-384-256-256 channels), the backbone of LPIPS-Alex."""

    def __init__(self, *, classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        if classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
                nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
                nn.Linear(4096, num_classes),
            )


def vgg16(**kw) -> VGG:
    return VGG(VGG16_CONFIG, **kw)


def vgg19(**kw) -> VGG:
    return VGG(VGG19_CONFIG, **kw)
