"""The README's main job: region-wise stylization with the model bundled in the package, offline.

Restyles the meadow of examples/content_landscape_large.jpg (1536x1023; mask examples/mask_meadow.png, which is
smaller: masks of any size are resampled) with the look of the coffee photo. The model works on a 96x64 copy; its
edit is lifted onto the full-resolution photo and pasted back inside the mask. Writes
outputs/demo/region_landscape.png (full resolution) and its strip region_landscape.strip.png
(content | style | mask | result, panels 768 px high).

    python scripts/demo.py                 # the demo
    python scripts/demo.py --docs docs     # also the README's pictures: a small strip and 1:1 crops
"""

import argparse
import os
import sys
from pathlib import Path

from styleforge.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
# relative to where it runs (run.sh runs it from the repository root), as a user types them: the output's metadata
# records the input paths as given
EXAMPLES = Path(os.path.relpath(ROOT / "examples"))
OUT = Path("outputs/demo/region_landscape.png")
ARGS = ["region", "apply", "--content", str(EXAMPLES / "content_landscape_large.jpg"),
        "--style", str(EXAMPLES / "style_coffee.png"), "--mask", str(EXAMPLES / "mask_meadow.png"),
        "--offline", "--overwrite"]


def write_docs(folder: Path) -> None:
    """docs pictures: the strip at 240 px, and 1:1 crops of the photo, plain upsampling and the guided lift."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    upsampled = OUT.with_name("region_landscape_upsampled.png")
    if main(ARGS + ["-o", str(upsampled), "--detail", "none", "--no-save-strip"]):
        sys.exit("could not write the upsampled comparison")
    strip = Image.open(OUT.with_name(OUT.stem + ".strip.png")).convert("RGB")
    strip.resize((round(strip.width * 240 / strip.height), 240), Image.LANCZOS).save(
        folder / "region_demo_strip.jpg", quality=85, optimize=True)
    box = (560, 600, 1010, 900)  # grass and tree trunks at the meadow's top edge
    crops = [Image.open(p).convert("RGB").crop(box) for p in
             (EXAMPLES / "content_landscape_large.jpg", upsampled, OUT)]
    labels = ("photo", "upsampled (--detail none)", "guided lift (default)")
    w, h = crops[0].size
    sheet = Image.new("RGB", (3 * w + 8, h + 22), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (crop, label) in enumerate(zip(crops, labels)):
        sheet.paste(crop, (i * (w + 4), 22))
        draw.text((i * (w + 4) + 4, 5), label, fill=(0, 0, 0))
    sheet.save(folder / "region_demo_detail.jpg", quality=88, optimize=True)
    print(f"wrote {folder / 'region_demo_strip.jpg'} and {folder / 'region_demo_detail.jpg'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=None, help="also write the README's pictures to this folder")
    args = parser.parse_args()
    code = main(ARGS + ["-o", str(OUT)])
    if code == 0 and args.docs:
        write_docs(args.docs)
    sys.exit(code)
