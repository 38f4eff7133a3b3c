"""Cross-Image Attention self-segmentation benchmark: the k-means of one (r*r, r*r) self-attention map.

    python benchmarks/bench_segmentation.py            # r = 64: the 4096 x 4096 maps of a 512 px SD 1.5 transfer
    python benchmarks/bench_segmentation.py --side 32

The map is synthetic but attention-like (softmax rows over a 5-region layout with spatial falloff and noise). A
transfer clusters two such maps (appearance, then structure). Prints CPU and wall seconds of one fit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from styleforge.cross_image.segmentation import kmeans


def attention_like_map(side: int, seed: int = 0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    y, x = yy * (64 / side), xx * (64 / side)
    region = (y > 40).long() + 2 * (((y - 28) ** 2 + (x - 30) ** 2) < 200).long() + 3 * ((x > 54) & (y < 20)).long()
    flat, pos = region.flatten(), torch.stack([yy.flatten(), xx.flatten()], 1).float()
    noise = torch.randn(side * side, side * side, generator=torch.Generator().manual_seed(seed))
    logits = 3.0 * (flat[:, None] == flat[None, :]).float() - torch.cdist(pos, pos) / (side / 8) + 0.5 * noise
    return logits.softmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=64, help="latent side r: the map is (r*r, r*r)")
    args = ap.parse_args()
    attn = attention_like_map(args.side)
    wall, cpu = time.time(), time.process_time()
    labels = kmeans(attn, 5, random_state=np.random.RandomState(1))
    print(f"k-means of a {tuple(attn.shape)} map (scikit-learn KMeans, 5 clusters, n_init=10): "
          f"{time.process_time() - cpu:.1f} s CPU, {time.time() - wall:.1f} s wall, cluster sizes "
          f"{np.bincount(labels.numpy()).tolist()}")


if __name__ == "__main__":
    main()
