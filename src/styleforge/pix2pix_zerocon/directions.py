"""Edit directions in the text-embedding space (paper Eq. 12, spec §3.4).

An edit direction is the difference of two mean embeddings, target minus source, over the full token sequence of
the text encoder's last hidden state ((1, 77, 768) for SD 1.x):

    delta_c = mean_j E(target_j) - mean_i E(source_i)

The paper prints source minus target (a typo: c + delta_c would move away from the target). Sentences come from
user files (one a line), from a built-in template generator that needs no model, from any callable, or are the two
prompts themselves (n = m = 1, "word swap in embedding space"). Mean embeddings are cached on disk per (model id,
sentence-list hash), so cat->dog and cat->horse share the cat mean, as pix2pix-zero's per-concept files do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..errors import InputError, OutputError
from ..io import atomic_write

#: encode(list of sentences) -> (B, L, D) token embeddings (the text encoder's last hidden state)
Encoder = Callable[[list[str]], torch.Tensor]
#: a pluggable sentence source: (concept word or prompt, how many) -> sentences
SentenceSource = Callable[[str, int], list[str]]

#: pix2pix-zero used about 1000 sentences per concept (its issue #16); fewer give entangled directions
DEFAULT_NUM_SENTENCES = 1000
FEW_SENTENCES_WARNING = 50

# Template pieces for sentences "around" a concept word. Any subject fits every slot, so source and target banks
# are built from the same contexts and their mean difference isolates the concept.
_FRAMES = ("a photo of {s}", "a picture of {s}", "an image of {s}", "a close-up photo of {s}", "a snapshot of {s}",
           "a blurry photo of {s}", "a bright photo of {s}", "a cropped photo of {s}", "a good photo of {s}",
           "a high quality photo of {s}")
_ADJECTIVES = ("", "small ", "large ", "young ", "old ", "cute ", "calm ", "curious ", "sleepy ", "happy ")
_SETTINGS = ("", " in a garden", " on a sofa", " in the snow", " on the grass", " near a window", " on a beach",
             " in a living room", " on a wooden floor", " in the street")


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def template_sentences(subject: str, n: int = DEFAULT_NUM_SENTENCES) -> list[str]:
    """Up to ``n`` deterministic sentences mentioning ``subject`` (frames x adjectives x settings, 1000 at most)."""
    subject = subject.strip()
    if not subject:
        raise InputError("cannot generate sentences for an empty concept")
    if n < 1:
        raise InputError(f"the number of sentences must be at least 1, got {n}")
    out = []
    for setting, adjective, frame in itertools.product(_SETTINGS, _ADJECTIVES, _FRAMES):
        out.append(frame.format(s=_article(adjective + subject)) + setting)
        if len(out) == n:
            break
    return out


def prompt_variations(prompt: str, n: int = len(_FRAMES) * len(_SETTINGS)) -> list[str]:
    """The prompt itself, then the prompt in the template frames and settings (paired banks for a prompt edit)."""
    prompt = prompt.strip()
    if not prompt:
        raise InputError("cannot generate sentences for an empty prompt")
    out = [prompt]
    for setting, frame in itertools.product(_SETTINGS, _FRAMES):
        if len(out) >= n:
            break
        out.append(frame.format(s=prompt) + setting)
    return out[:n]


def single_sentence(text: str, n: int = 1) -> list[str]:
    """The degenerate source: the text itself (n = m = 1 gives delta_c = E(target) - E(source))."""
    return [text]


SENTENCE_SOURCES: dict[str, SentenceSource] = {"template": template_sentences, "prompt_template": prompt_variations,
                                               "single": single_sentence}


def resolve_sentence_source(source: str | SentenceSource) -> SentenceSource:
    if callable(source):
        return source
    try:
        return SENTENCE_SOURCES[source]
    except KeyError:
        raise InputError(f"unknown sentence source {source!r}; use one of {sorted(SENTENCE_SOURCES)} or a callable") from None


def read_sentences(path: str | os.PathLike) -> list[str]:
    """One sentence a line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sentence file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"sentence file is not UTF-8 text: {path}") from None
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise InputError(f"sentence file has no sentences: {path}")
    return sentences


def as_sentences(value: str | os.PathLike | Sequence[str], what: str) -> list[str]:
    """A list of sentences as given, or read from a file path."""
    if isinstance(value, (str, os.PathLike)):
        return read_sentences(value)
    sentences = [str(s).strip() for s in value if str(s).strip()]
    if not sentences:
        raise InputError(f"the {what} sentence list is empty")
    return sentences


def sentence_hash(sentences: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()[:32]


@torch.no_grad()
def mean_embedding(encode: Encoder, sentences: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """(1, L, D) float32 mean of E(sentence) over the list, encoded in batches."""
    if not sentences:
        raise InputError("cannot average the embeddings of an empty sentence list")
    total, count = None, 0
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start:start + batch_size])
        emb = encode(chunk).float()
        part = emb.sum(dim=0, keepdim=True)
        total = part if total is None else total + part
        count += len(chunk)
    return (total / count).cpu()


def _cache_root() -> Path:
    from ..cache import cache_home

    return cache_home() / "directions"


class EmbeddingCache:
    """Mean embeddings on disk, one safetensors file per (model id, sentence-list hash)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else _cache_root()

    def path(self, model_id: str, sentences: Sequence[str]) -> Path:
        key = hashlib.sha256(json.dumps([model_id, sentence_hash(sentences)]).encode()).hexdigest()[:40]
        return self.root / f"{key}.safetensors"

    def get(self, model_id: str, sentences: Sequence[str]) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self.path(model_id, sentences)
        if not p.exists():
            return None
        try:
            return load_file(str(p))["mean"]
        except Exception:  # a damaged entry is recomputed, not trusted
            return None

    def put(self, model_id: str, sentences: Sequence[str], mean: torch.Tensor) -> Path | None:
        from safetensors.torch import save_file

        p = self.path(model_id, sentences)
        try:
            with atomic_write(p) as tmp:
                save_file({"mean": mean.contiguous().cpu()}, str(tmp),
                          metadata={"model_id": model_id, "sentences": str(len(sentences))})
        except (OSError, OutputError):  # a read-only cache must not stop an edit
            return None
        return p


def cached_mean_embedding(encode: Encoder, sentences: Sequence[str], *, model_id: str | None = None,
                          cache: EmbeddingCache | None = None) -> torch.Tensor:
    """:func:`mean_embedding`, read from / written to ``cache`` when both a cache and a model id are given."""
    if cache is not None and model_id:
        hit = cache.get(model_id, sentences)
        if hit is not None:
            return hit
    mean = mean_embedding(encode, sentences)
    if cache is not None and model_id:
        cache.put(model_id, sentences, mean)
    return mean


@dataclass
class EditDirection:
    """delta_c (1, L, D) float32, target minus source, and where it came from."""

    delta: torch.Tensor
    source: str = ""  # a description: the word, the prompt or the file
    target: str = ""
    num_source: int = 0  # sentences averaged on each side (0: given as a tensor)
    num_target: int = 0
    model_id: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.delta = _as_sequence_embedding(self.delta, "edit direction")

    def info(self) -> dict:
        return {"source": self.source, "target": self.target, "num_source": self.num_source,
                "num_target": self.num_target, "model_id": self.model_id, "norm": float(self.delta.norm()), **self.extra}

    def save(self, path: str | os.PathLike) -> Path:
        """``.safetensors`` (with the provenance in its header) or ``.pt`` (a bare tensor, pix2pix-zero style)."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_write(path) as tmp:
            if path.suffix == ".pt":
                torch.save(self.delta.contiguous().cpu(), tmp)
            else:
                save_file({"delta": self.delta.contiguous().cpu()}, str(tmp),
                          metadata={"styleforge_direction": json.dumps(self.info(), default=str)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EditDirection":
        """A file written by :meth:`save`, or any file holding one (1, L, D) / (L, D) tensor."""
        path = Path(path)
        info = {}
        if path.suffix == ".safetensors":
            info = _safetensors_metadata(path).get("styleforge_direction")
            try:
                info = json.loads(info) if info else {}
                if not isinstance(info, dict):
                    raise ValueError
            except ValueError:
                raise InputError(f"{path} is damaged (its direction metadata is not valid JSON)") from None
        delta = load_embedding(path, what="direction")
        info.pop("norm", None)
        known = {k: info.pop(k) for k in ("source", "target", "num_source", "num_target", "model_id") if k in info}
        known.setdefault("source", "")
        known.setdefault("target", str(path))
        return cls(delta, extra=info, **known)


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:
        raise InputError(f"not a readable safetensors file: {path}") from None


def _as_sequence_embedding(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"the {what} must be a tensor, got {type(t).__name__}")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1:
        raise InputError(f"the {what} must have shape (1, tokens, width) or (tokens, width), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InputError(f"the {what} must be a floating-point tensor, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise InputError(f"the {what} contains NaN or infinite values")
    return t.detach().float().cpu()


def load_embedding(path: str | os.PathLike, *, what: str = "embedding") -> torch.Tensor:
    """A (1, L, D) float32 tensor from ``.pt``/``.pth``/``.bin`` (pix2pix-zero's files load as they are, also the
    fp16 ones saved from a GPU) or ``.safetensors`` (a single tensor, or ``delta``/``mean``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            key = next((k for k in ("delta", "mean", "embedding") if k in tensors), None)
            if key is None and len(tensors) == 1:
                key = next(iter(tensors))
            if key is None:
                raise InputError(f"{what} file {path} holds several tensors ({', '.join(sorted(tensors))}); "
                                 "expected one, or one named 'delta' or 'mean'")
            t = tensors[key]
        else:
            t = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(t, dict) and len(t) == 1:
                t = next(iter(t.values()))
    except InputError:
        raise
    except Exception:  # truncated files, pickles that are not plain tensors (refused by weights_only)
        raise InputError(f"{path} is damaged or not a {what} file (a tensor saved with torch.save or safetensors)") from None
    return _as_sequence_embedding(t, f"{what} in {path.name}")


def direction_from_embeddings(source_mean: torch.Tensor, target_mean: torch.Tensor, **info) -> EditDirection:
    """delta_c = target mean - source mean (two precomputed mean embeddings, spec §3.4 input (d))."""
    s = _as_sequence_embedding(source_mean, "source embedding")
    t = _as_sequence_embedding(target_mean, "target embedding")
    if s.shape != t.shape:
        raise InputError(f"source and target embeddings differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
    return EditDirection(t - s, **info)


def direction_from_sentences(encode: Encoder, source_sentences: Sequence[str], target_sentences: Sequence[str], *,
                             model_id: str | None = None, cache: EmbeddingCache | None = None,
                             source: str = "", target: str = "", cache_key: str | None = None) -> EditDirection:
    """Paper Eq. 12 with the sign fixed: mean E(target sentences) - mean E(source sentences); n != m allowed.
    ``cache_key`` (default ``model_id``) names the text encoder in the cache: a fingerprint of its weights."""
    key = cache_key or model_id
    src = cached_mean_embedding(encode, list(source_sentences), model_id=key, cache=cache)
    tgt = cached_mean_embedding(encode, list(target_sentences), model_id=key, cache=cache)
    return EditDirection(tgt - src, source=source, target=target, num_source=len(source_sentences),
                         num_target=len(target_sentences), model_id=model_id or "",
                         extra={"source_hash": sentence_hash(source_sentences),
                                "target_hash": sentence_hash(target_sentences)})


def apply_direction(embeds: torch.Tensor, direction: EditDirection | torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """c_hat = c + w * delta_c on every token row (BOS, words, EOS, padding), as the official code does."""
    delta = direction.delta if isinstance(direction, EditDirection) else direction
    if delta.shape[-2:] != embeds.shape[-2:]:
        raise InputError(f"the edit direction has shape {tuple(delta.shape)} but this model's text embeddings are "
                         f"{tuple(embeds.shape[1:])} per prompt; was it built for another model?")
    return embeds + multiplier * delta.to(embeds.device, embeds.dtype)


def warn_if_few(sentences: Iterable[str], what: str) -> str | None:
    n = len(list(sentences))
    if 1 < n < FEW_SENTENCES_WARNING:
        return (f"only {n} {what} sentences: pix2pix-zero used about {DEFAULT_NUM_SENTENCES} per concept; "
                "few sentences give entangled directions")
    return None
