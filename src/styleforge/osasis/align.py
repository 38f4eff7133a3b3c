"""FFHQ-style face alignment (the FFHQ / DiffAE ``align.py`` recipe) from 68 facial landmarks.

No detector ships here: pass landmarks (dlib 68-point order) read from a file, or any callable
``detector(PIL image) -> (68, 2) array`` via :func:`align_with_detector`.

Recipe: eye centres and mouth corners give an oriented square (``quad``) of side 2 * max(2.0 * |eye-to-eye|,
1.8 * |eye-to-mouth|) centred 0.1 * eye-to-mouth below the eye midpoint; the image is reflect-padded where the
square leaves it (as FFHQ, without its blur blending), then resampled to ``output_size``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import InputError


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
    """68 (x, y) points from a JSON list or a whitespace/comma separated text file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"landmarks file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            pts = np.asarray(json.loads(text), dtype=np.float64)
        except (json.JSONDecodeError, ValueError, TypeError):
            pts = np.asarray([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except (UnicodeDecodeError, ValueError, IsADirectoryError):
        raise InputError(f"{path} is not a landmarks file (68 x, y numbers as JSON or text)") from None
    pts = pts.reshape(-1, 2) if pts.size % 2 == 0 else pts
    if pts.shape != (68, 2):
        raise InputError(f"{path}: expected 68 (x, y) landmarks, got {pts.size} numbers")
    return pts


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The 4 corners (top-left, bottom-left, bottom-right, top-right) of the FFHQ crop."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise InputError(f"expected (68, 2) landmarks, got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_face(img: Image.Image, landmarks: np.ndarray, output_size: int = 256) -> Image.Image:
    quad = ffhq_quad(landmarks)
    w, h = img.size
    pad = int(np.ceil(max(-quad.min(), (quad[:, 0] - w).max(), (quad[:, 1] - h).max(), 0))) + 1
    arr = np.pad(np.asarray(img.convert("RGB")), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    quad = quad + pad
    padded = Image.fromarray(arr)
    return padded.transform((output_size, output_size), Image.QUAD, (quad + 0.5).flatten().tolist(), Image.BILINEAR)


def align_with_detector(img: Image.Image, detector: Callable[[Image.Image], np.ndarray], output_size: int = 256) -> Image.Image:
    """Align with landmarks from any detector callable (e.g. a dlib 68-point predictor wrapped by the user)."""
    return align_face(img, np.asarray(detector(img)), output_size)
