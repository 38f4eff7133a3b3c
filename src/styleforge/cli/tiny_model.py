"""``styleforge tiny-model``: write a tiny random SD-shaped model folder for trying the CLI without weights."""

from __future__ import annotations

from argparse import BooleanOptionalAction

from .common import add_subcommand


def register(sub) -> None:
    p = add_subcommand(sub, "tiny-model", help="write a tiny randomly initialised model folder: SD 1.x, SDXL or an OSASIS set (offline demos, tests)",
                       description="Write a tiny, randomly initialised model folder shaped like Stable Diffusion 1.x or SDXL, "
                                   "or an OSASIS set (ddpm/ P2 ADM, diffae/ DiffAE, latent/ latent DDIM, clip/ CLIP). "
                                   "It produces noise-like images: it exists to run the CLI end to end without weights.")
    p.add_argument("folder", help="folder to create")
    p.add_argument("--family", choices=("sd1", "sdxl", "osasis"), default="sd1", help="architecture family")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--overwrite", action=BooleanOptionalAction, default=False, help="replace an existing folder's files")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import OutputError
    from ..testing import save_tiny_model

    folder = Path(args.folder)
    if folder.exists() and any(folder.iterdir()) and not args.overwrite:
        raise OutputError(f"folder exists and is not empty: {folder} (pass --overwrite)")
    if args.family == "osasis":
        from ..osasis.tiny import TINY_SET, save_tiny_osasis

        save_tiny_osasis(folder, args.seed)
        print(f"wrote a tiny OSASIS set to {folder}: " + ", ".join(f"{folder / k} ({v})" for k, v in TINY_SET.items()))
        return 0
    save_tiny_model(folder, args.family, args.seed)
    print(f"wrote a tiny {args.family} model to {folder}")
    return 0
