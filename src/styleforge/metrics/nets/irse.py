"""ArcFace IR-SE50 (Deng et al. 2019; the improved-ResNet-50 with squeeze-excitation of TreB1eN's
InsightFace_Pytorch, ``model_ir_se50.pth``, the identity network of pSp / e4e / HFGI).

Layout: ``input_layer.{0: conv 3→64 3x3, 1: BN, 2: PReLU}``; ``body.N`` for the 24 bottleneck units (3, 4, 14, 3
units of depth 64, 128, 256, 512, the first unit of each stage with stride 2), each with ``res_layer.{0: BN,
1: conv 3x3, 2: PReLU, 3: conv 3x3 (stride), 4: BN, 5: SE (fc1, fc2 1x1 convs, reduction 16)}`` and, where the
depth changes, ``shortcut_layer.{0: conv 1x1, 1: BN}`` (a parameter-free 1x1 max-pool otherwise);
``output_layer.{0: BN2d(512), 1: Dropout, 2: Flatten, 3: Linear(512·7·7, 512), 4: BN1d(512)}``.
Input 112x112 in [-1, 1]; output the 512-d embedding (L2-normalised by :meth:`embed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IR_SE50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


class BottleneckIRSE(nn.Module):
    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    def __init__(self, *, stages=IR_SE50_STAGES, input_size: int = 112, drop_ratio: float = 0.6):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in stages:
            units.append(BottleneckIRSE(cin, depth, 2))
            units += [BottleneckIRSE(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        last = stages[-1][1]
        side = input_size // 2 ** len(stages)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last), nn.Dropout(drop_ratio), nn.Flatten(), nn.Linear(last * side * side, 512),
            nn.BatchNorm1d(512),
        )

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))

    def embed(self, x):
        return F.normalize(self(x), dim=1)
