#!/usr/bin/env python
"""Gather freely licensed photos for the bundled region-wise stylizer and record where each one came from.

Sources (all offline-reproducible with the ordinary package clients):
- Debian wallpaper packages, fetched with ``apt-get download`` and unpacked with ``dpkg -x``. Only the files
  that are photographs are used (the packages also hold illustrations); each file's licence is read from the
  package's machine-readable ``copyright`` file.
- scikit-image's bundled sample photos (public domain / CC0 per their docstrings). scikit-image is needed by
  this script only: ``pip install scikit-image``. It is not a styleforge dependency.

Writes ``OUT/train/*.png`` (training photos), ``OUT/heldout/*.png`` (photos kept out of training, used for the
examples and the benchmark), and ``OUT/provenance.json`` + ``OUT/PROVENANCE.md``. Images are stored with
their shorter side reduced to ``--max-side`` pixels.

    python scripts/gather_region_data.py --out data/region
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from PIL import Image

# package -> (glob patterns of the photographs in it, relative to the unpacked tree)
DEBIAN_SOURCES = {
    "mate-backgrounds": ["usr/share/backgrounds/mate/nature/*.jpg"],
    "lomiri-wallpapers-16.04": ["usr/share/backgrounds/*.jpg"],
    "lomiri-wallpapers-20.04": ["usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
}
# files matched above that are gradients or graphics rather than photographs (checked by eye)
NOT_PHOTOS = {"umang_by_Abhishek_Mudgal.jpg"}

# scikit-image sample photos: name -> (licence, note from its docstring, split)
SKIMAGE_PHOTOS = {
    "astronaut": ("public domain", "NASA photo of Eileen Collins; 'No known copyright restrictions, released into the public domain.'", "heldout"),
    "chelsea": ("CC0-1.0", "Stefan van der Walt's cat; 'No copyright restrictions. CC0 by the photographer.'", "heldout"),
    "coffee": ("CC0-1.0", "Rachel Michetti; 'No copyright restrictions. CC0 by the photographer.'", "heldout"),
    "rocket": ("public domain", "SpaceX launch photo released into the public domain", "train"),
    "hubble_deep_field": ("public domain", "NASA Hubble image, 'may be freely used in the public domain'", "train"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_dep5(text: str) -> dict[str, tuple[str, str]]:
    """basename pattern -> (licence, copyright) from a DEP-5 ``copyright`` file."""
    result: dict[str, tuple[str, str]] = {}
    for para in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:\s*(\S.*)$", para, re.M)
        if not files or not lic:
            continue
        holder = re.search(r"^Copyright:(.*(?:\n[ \t].*)*)", para, re.M)
        copyright_text = " ".join(holder.group(1).split()) if holder else ""
        for pattern in files.group(1).split():
            result[pattern] = (lic.group(1).strip(), copyright_text)
    return result


def licence_for(relpath: str, dep5: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """Most specific DEP-5 match for a file (DEP-5 paths are source paths, so match by basename as well)."""
    name = os.path.basename(relpath)
    best = None
    for pattern, value in dep5.items():
        if fnmatch(relpath, pattern) or fnmatch(name, os.path.basename(pattern)) or relpath.endswith(pattern):
            if pattern == "*" and best is not None:
                continue
            if best is None or len(pattern) > len(best[0]):
                best = (pattern, value)
    if best is None:
        return "UNKNOWN", ""
    return best[1]


def save_reduced(img: Image.Image, dest: Path, max_side: int) -> tuple[int, int]:
    img = img.convert("RGB")
    w, h = img.size
    scale = max_side / min(w, h)
    if scale < 1:
        img = img.resize((round(w * scale), round(h * scale)), Image.LANCZOS, reducing_gap=3.0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, dest)
    return img.size


def gather_debian(out: Path, cache: Path, max_side: int) -> list[dict]:
    cache.mkdir(parents=True, exist_ok=True)
    records = []
    for package, patterns in DEBIAN_SOURCES.items():
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            print(f"apt-get download {package}", file=sys.stderr)
            subprocess.run(["apt-get", "download", package], cwd=cache, check=True, stdout=subprocess.DEVNULL)
            debs = sorted(cache.glob(f"{package}_*.deb"))
        deb = debs[-1]
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True).stdout.strip()
        tree = cache / f"x_{package}"
        if not tree.exists():
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
        dep5 = parse_dep5((tree / "usr/share/doc" / package / "copyright").read_text(errors="replace"))
        for pattern in patterns:
            for src in sorted(tree.glob(pattern)):
                if src.name in NOT_PHOTOS:
                    continue
                rel = str(src.relative_to(tree))
                licence, holder = licence_for(os.path.relpath(rel, "usr/share/backgrounds"), dep5)
                dest = out / "train" / f"{package}__{src.stem}.png"
                size = save_reduced(Image.open(src), dest, max_side)
                records.append({
                    "file": str(dest.relative_to(out)), "split": "train", "source": f"Debian package {package} {version} ({deb.name})",
                    "original_path": "/" + rel, "original_sha256": sha256(src), "license": licence, "copyright": holder,
                    "stored_size": list(size),
                })
    return records


def gather_skimage(out: Path, max_side: int) -> list[dict]:
    try:
        import skimage
        import skimage.data
    except ImportError:
        sys.exit("scikit-image is needed by this script: pip install scikit-image")
    records = []
    for name, (licence, note, split) in SKIMAGE_PHOTOS.items():
        img = Image.fromarray(getattr(skimage.data, name)())
        dest = out / split / f"skimage__{name}.png"
        size = save_reduced(img, dest, max_side)
        records.append({
            "file": str(dest.relative_to(out)), "split": split, "source": f"scikit-image {skimage.__version__} skimage.data.{name}()",
            "original_path": f"skimage/data ({name})", "license": licence, "copyright": note, "stored_size": list(size),
        })
    return records


def write_provenance(out: Path, records: list[dict]) -> None:
    (out / "provenance.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = ["# Region-stylizer training data provenance", "",
             "Written by `scripts/gather_region_data.py`.", "",
             "| file | split | licence | copyright / note | source |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['file']} | {r['split']} | {r['license']} | {r['copyright']} | {r['source']}: {r['original_path']} |")
    (out / "PROVENANCE.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/region", help="output folder (git-ignored)")
    parser.add_argument("--cache", default=".cache/region_debs", help="where .deb files are downloaded and unpacked")
    parser.add_argument("--max-side", type=int, default=256, help="shorter side of the stored images")
    args = parser.parse_args(argv)
    out = Path(args.out)
    records = gather_debian(out, Path(args.cache), args.max_side) + gather_skimage(out, args.max_side)
    unknown = [r["file"] for r in records if r["license"] == "UNKNOWN"]
    if unknown:
        sys.exit(f"no licence found for: {', '.join(unknown)}")
    write_provenance(out, records)
    n_train = sum(r["split"] == "train" for r in records)
    print(f"wrote {n_train} training and {len(records) - n_train} held-out photos to {out} (provenance in {out / 'PROVENANCE.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
