"""Captioning the input image (paper Eq. 11: P = BLIP(X_0)), behind a small pluggable interface.

A captioner is any callable ``PIL image -> str``. The default, :class:`BlipCaptioner`, uses transformers' BLIP
captioning model (``Salesforce/blip-image-captioning-base``, the BLIP-base COCO captioner family that
pix2pix-zero's LAVIS model belongs to) with LAVIS-like decoding: 3 beams, 10 to 30 tokens, no text prefix.
Its weights are looked up locally first; when they are not available and no caption was given, the user gets
one message that says both ways out.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from ..errors import InputError, ModelNotFoundError

Captioner = Callable[[Image.Image], str]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


class BlipCaptioner:
    """BLIP image captioning via transformers; loads lazily on first use."""

    def __init__(self, model: str = DEFAULT_CAPTIONER, *, device=None, dtype=None, offline: bool | None = None,
                 num_beams: int = 3, min_length: int = 10, max_length: int = 30):
        self.model_name = model
        self.device, self.dtype, self.offline = device, dtype, offline
        self.generate_kwargs = dict(num_beams=num_beams, min_length=min_length, max_length=max_length)
        self._model = self._processor = None

    def load(self) -> "BlipCaptioner":
        if self._model is not None:
            return self
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from ..loading import local_files_only, resolve_model_folder

        folder = resolve_model_folder(self.model_name, offline=True, required_file="config.json",
                                      what="BLIP captioning model") if _looks_local(self.model_name) else None
        source = str(folder) if folder is not None else self.model_name
        # the local cache first; a download only when the hub answers (the hub client retries for minutes otherwise)
        attempts = [True] if folder is not None or local_files_only(self.offline) else [True, False]
        error = None
        for local_only in attempts:
            try:
                self._processor = BlipProcessor.from_pretrained(source, local_files_only=local_only)
                model = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local_only)
                break
            except Exception as e:  # missing weights, no network, gated repo: all mean "not available"
                error = e
        else:
            from ..loading import unavailable_reason

            reason = unavailable_reason(error, self.offline) if folder is None else type(error).__name__
            raise ModelNotFoundError(f"captioning model {self.model_name!r} is not available ({reason})") from None
        self._model = model.to(device=self.device, dtype=self.dtype).eval()
        return self

    def __call__(self, image: Image.Image) -> str:
        import torch

        self.load()
        inputs = self._processor(images=image.convert("RGB"), return_tensors="pt").to(self._model.device)
        if self.dtype is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.no_grad():
            ids = self._model.generate(**inputs, **self.generate_kwargs)
        return self._processor.decode(ids[0], skip_special_tokens=True).strip()


def _looks_local(name: str) -> bool:
    from pathlib import Path

    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def resolve_caption(image: Image.Image, caption: str | None = None, captioner: Captioner | str | None = "auto",
                    **captioner_kwargs) -> str:
    """The caption to use: the user's if given, else the captioner's; a clear error when there is neither.

    ``captioner``: a callable, ``"auto"`` (the default BLIP model), a model id/folder for :class:`BlipCaptioner`,
    or ``None`` (captioning disabled).
    """
    if caption is not None:
        caption = caption.strip()
        if not caption:
            raise InputError("the caption is empty; give a sentence describing the image, or leave it out to caption with BLIP")
        return caption
    if captioner is None:
        raise InputError("no caption given and captioning is disabled: pass caption=... (CLI: --caption \"a photo of a cat\")")
    if isinstance(captioner, str):
        captioner = BlipCaptioner(DEFAULT_CAPTIONER if captioner == "auto" else captioner, **captioner_kwargs)
    try:
        text = captioner(image)
    except ModelNotFoundError as e:
        raise InputError(f"no caption given and the captioner could not run: {e}. Pass a caption "
                         "(CLI: --caption \"a photo of a cat\") or make the BLIP weights available "
                         f"(`hf download {DEFAULT_CAPTIONER}` where there is network)") from None
    text = (text or "").strip()
    if not text:
        raise InputError("the captioner returned an empty caption; pass one with caption=... / --caption")
    return text
