"""Images in, images out.

Inputs are accepted as a path, a PIL image, a numpy array or a torch tensor and always come out as an 8-bit
RGB PIL image (EXIF orientation applied, alpha composited onto white, greyscale/palette/16-bit/CMYK
converted). Outputs are PNG files written atomically, with the method, its parameters, the seed and the model
id in a ``styleforge`` text chunk so a result can be reproduced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import InputError, OutputError, os_error_message, write_failure_message

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

#: Images with more pixels than this are refused before they are decoded (decompression-bomb guard).
MAX_PIXELS = 64_000_000
#: A mask pixel (value in [0, 1] after area-averaging onto the target grid) counts as inside when >= this.
MASK_THRESHOLD = 0.5
METADATA_KEY = "styleforge"


# --------------------------------------------------------------------------------------------- loading


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a folder: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty (0 bytes): {path}")
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            _check_size(img.size, path)
            img.load()  # decode now so truncation is reported here, not later
            if getattr(img, "n_frames", 1) > 1:  # animated: keep the first frame and let go of the file
                first = img.copy()
                img.close()
                img = first
    except UnidentifiedImageError:
        raise InputError(f"not an image file (or an unsupported format): {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image is too large to be decoded safely (over {MAX_PIXELS:,} pixels): {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"image file is truncated or corrupt: {path} ({e})") from None
    finally:
        if img is not None and sys.exc_info()[0] is not None:
            img.close()  # a refused image leaves no open file (and no "unclosed file" warning) behind
    return img


def _check_size(size: tuple[int, int], where: Any) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"image has zero size ({w}x{h}): {where}")
    if w * h > MAX_PIXELS:
        raise InputError(f"image is too large ({w}x{h} = {w * h:,} pixels, limit {MAX_PIXELS:,}): {where}")


def _array_to_pil(arr: np.ndarray, where: str) -> Image.Image:
    """HW, HWC (C in 1..4) arrays: uint8, uint16, bool, or float in [0, 1]."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(f"{where}: expected an HxW or HxWxC array with C in 1, 3 or 4, got shape {arr.shape}")
    _check_size((arr.shape[1], arr.shape[0]), where)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{where}: array contains NaN or infinite values")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{where}: unsupported array dtype {arr.dtype} (use uint8, uint16, bool or float in [0, 1])")
    return Image.fromarray(arr)


def _tensor_to_pil_input(t: torch.Tensor, where: str) -> Image.Image:
    """CHW or 1xCxHxW float tensors in [0, 1] (HxW for greyscale)."""
    t = t.detach().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise InputError(f"{where}: expected a single image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.is_floating_point():
        t = t.float()
    return _array_to_pil(t.numpy(), where)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to 8-bit RGB. Transparent pixels are composited onto ``background``."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / scale, 0, 1) * 255).round().astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max() <= 1.0 else 255.0
        img = Image.fromarray((np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def load_image(source: ImageLike, *, name: str = "image") -> Image.Image:
    """Load any supported input as an 8-bit RGB PIL image, refusing unusable ones with :class:`InputError`."""
    if isinstance(source, (str, os.PathLike)):
        img = _open_path(Path(source))
    elif isinstance(source, Image.Image):
        _check_size(source.size, name)
        img = source
    elif isinstance(source, np.ndarray):
        img = _array_to_pil(source, name)
    elif isinstance(source, torch.Tensor):
        img = _tensor_to_pil_input(source, name)
    else:
        raise InputError(f"{name}: unsupported input type {type(source).__name__} (path, PIL image, array or tensor)")
    return to_rgb(img)


def center_crop_resize(img: Image.Image, size: int | tuple[int, int], resample: int = Image.BICUBIC) -> Image.Image:
    """Crop the centre to the target aspect ratio, then resize (bicubic by default) to ``size`` (int = square, or (w, h))."""
    tw, th = (size, size) if isinstance(size, int) else size
    w, h = img.size
    scale = max(tw / w, th / h)
    cw, ch = round(tw / scale), round(th / scale)  # crop box in source pixels with the target aspect
    left, top = (w - cw) // 2, (h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return img.resize((tw, th), resample) if img.size != (tw, th) else img


def aspect_size(image_size: tuple[int, int], side: int, multiple: int, *, fit: str = "short") -> tuple[int, int]:
    """(w, h) with the image's aspect ratio, its shorter (``fit="short"``) or longer (``"long"``) side scaled to
    ``side``, the other rounded to the nearest multiple of ``multiple`` (down with ``"long"``, pix2pix-zeroCon
    spec §8.21, so no side exceeds ``side``), at least one multiple."""
    import math

    w, h = image_size
    scale = side / (min(w, h) if fit == "short" else max(w, h))
    rounding = round if fit == "short" else math.floor
    return tuple(max(multiple, int(rounding(x * scale / multiple)) * multiple) for x in (w, h))


def crop_pixels(image_size: tuple[int, int], target: tuple[int, int]) -> float:
    """How many pixels (at the target's scale) a centre crop to ``target``'s aspect ratio cuts away (0: none)."""
    (w, h), (tw, th) = image_size, target
    scale = max(tw / w, th / h)
    return max(w * scale - tw, h * scale - th)


def pil_to_tensor(img: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """RGB PIL image(s) to a contiguous float tensor (B, 3, H, W) in [-1, 1].

    Contiguous on purpose: a channels-last-strided view makes the CPU VAE encoder take another convolution path
    that is about 100x less accurate in float32 (9.1e-5 against 5e-7 on SD's VAE).
    """
    imgs = [img] if isinstance(img, Image.Image) else list(img)
    arr = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) for i in imgs])
    return (torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0).contiguous()


def check_finite(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a one-line :class:`OutputError` when it holds NaN or infinite values (never saved as black)."""
    if not torch.isfinite(x).all():
        raise OutputError(
            "the result contains NaN or infinite values (often fp16 overflow): try --dtype fp32 or bf16"
        )
    return x


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """A (B, 3, H, W) tensor in [-1, 1] to a list of RGB PIL images. NaNs are refused, not saved as black."""
    x = check_finite(x.detach().float().cpu())
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def load_mask(
    source: ImageLike,
    size: tuple[int, int] | None = None,
    *,
    threshold: float = MASK_THRESHOLD,
    required: bool = True,
    name: str = "mask",
) -> torch.Tensor:
    """Load a mask as a (1, 1, h, w) float tensor of 0s and 1s.

    Any image size is accepted. The mask value is the alpha channel when the image has a non-trivial one,
    otherwise its luminance, scaled to [0, 1]. It is area-averaged onto ``size`` = (h, w) (the latent grid, say)
    and then binarised: a cell is inside when its value >= ``threshold`` (0.5 by default). A mask with no inside
    cell is refused when ``required``.
    """
    if isinstance(source, torch.Tensor) or isinstance(source, np.ndarray):
        arr = source.detach().cpu().float().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise InputError(f"{name}: expected a 2-D mask, got shape {tuple(np.shape(source))}")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float32)
        elif arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: mask contains NaN or infinite values")
        _check_size((arr.shape[1], arr.shape[0]), name)
        values = np.clip(arr, 0.0, 1.0)
    else:
        img = _open_path(Path(source)) if isinstance(source, (str, os.PathLike)) else source
        if not isinstance(img, Image.Image):
            raise InputError(f"{name}: unsupported mask type {type(source).__name__}")
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA")
        alpha = img.getchannel("A") if "A" in img.getbands() else None
        if alpha is not None and alpha.getextrema() != (255, 255):
            grey = alpha
        else:
            grey = to_rgb(img).convert("L")
        values = np.asarray(grey, dtype=np.float32) / 255.0
    mask = torch.from_numpy(values)[None, None]
    if size is not None and tuple(mask.shape[-2:]) != tuple(size):
        mask = torch.nn.functional.interpolate(mask, size=tuple(size), mode="area")
    mask = (mask >= threshold).float()
    if required and mask.sum() == 0:
        where = source if isinstance(source, (str, os.PathLike)) else name
        raise InputError(f"{name} is empty (no pixel at or above {threshold}) after resizing to {tuple(mask.shape[-2:])}: {where}")
    return mask


# --------------------------------------------------------------------------------------------- saving


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[Any] = (),
                      suffix: str = ".png") -> Path:
    """Validate an output path before any work is done; returns it with ``suffix`` added if it had none."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(suffix)
    if path.suffix.lower() != suffix:
        raise OutputError(f"this output is written as {suffix[1:].upper()}; use a {suffix} file name instead of {path.name}")
    if path.is_dir():
        raise OutputError(f"output path is a folder: {path}")
    check_not_an_input(path, inputs)
    _check_parents(path)
    if path.exists() and not overwrite:
        raise OutputError(f"output exists: {path} (pass --overwrite to replace it)")
    return path


def check_not_an_input(path: str | os.PathLike, inputs: Iterable[Any]) -> None:
    """Refuse an output that is (after resolving links) one of the command's input files."""
    path = Path(path)
    for inp in inputs:
        if not isinstance(inp, (str, os.PathLike)) or not Path(inp).exists():
            continue
        inp = Path(inp)
        if (path.exists() and path.samefile(inp)) or path.resolve() == inp.resolve():
            raise OutputError(f"refusing to overwrite an input file: {path}")


def _png_info(metadata: dict[str, Any] | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "styleforge")
    if metadata:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True, default=str))
    return info


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path, base: int = 0o666) -> int:
    """The mode a replaced file keeps, or the one a new file gets from the umask (mkstemp makes 0600 files)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return base & ~_umask()


def _check_parents(path: Path) -> None:
    """Refuse ``path`` when its nearest existing parent is a file (the OS would say "not a directory")."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}'s parent {parent} is a file, not a folder")
            break


def ensure_parent(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent folders, refusing in one line when a parent is a file or cannot be created."""
    path = Path(path)
    _check_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``, else removed.

    Readers never see a half-written file, a full disk leaves the old file (if any) intact and no temporary
    file behind, and every failure to write is one :class:`OutputError` line. A new file gets the umask's mode,
    a replaced one keeps its mode.
    """
    path = ensure_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        message = write_failure_message(e, path)
        if message:
            raise OutputError(message) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`; returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success it is renamed to ``path``, else removed.

    A multi-file output (a model folder, a report) thus appears complete or not at all. An existing folder is
    replaced only after the new one is complete (``replace=False`` refuses it instead).
    """
    path = ensure_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    try:
        yield tmp
        os.chmod(tmp, _final_mode(path, 0o777))
        if path.exists():
            if not replace:
                raise OutputError(f"output exists: {path} (pass --overwrite to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            try:
                os.replace(path, old / "x")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / "x", path)  # put the previous folder back
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        message = write_failure_message(e, path)
        if message:
            raise OutputError(message) from None
        raise


def save_image(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    inputs: Iterable[Any] = (),
) -> Path:
    """Write ``image`` as PNG atomically (temporary file in the same folder, fsync, rename)."""
    path = check_output_path(path, overwrite=overwrite, inputs=inputs)
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=_png_info(metadata))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``styleforge`` metadata stored in a PNG written by :func:`save_image` ({} if none)."""
    with Image.open(path) as img:
        text = img.text.get(METADATA_KEY) if hasattr(img, "text") else None
    return json.loads(text) if text else {}


def make_strip(images: Sequence[Image.Image], height: int | None = None) -> Image.Image:
    """Images side by side, each resized to a common height (the first image's by default)."""
    height = height or images[0].height
    resized = [i.resize((max(1, round(i.width * height / i.height)), height), Image.BICUBIC) for i in images]
    strip = Image.new("RGB", (sum(i.width for i in resized), height), (255, 255, 255))
    x = 0
    for i in resized:
        strip.paste(i.convert("RGB"), (x, 0))
        x += i.width
    return strip


def sibling_path(output: str | os.PathLike, tag: str) -> Path:
    """``out.png`` + ``"strip"`` -> ``out.strip.png`` (side outputs live beside the main output)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.{tag}.png")
