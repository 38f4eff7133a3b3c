"""One place that turns a model reference (hub id or local folder) into loaded components.

Every failure a user can meet (no network, not in the cache, a folder that is not a model, an architecture
the method does not support) becomes a :class:`ModelNotFoundError` whose message names the model and says how
to provide it. Downloads never hang: offline mode is honoured and hub timeouts are short.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_SD1_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"

HOW_TO_PROVIDE = (
    "download it where there is network (`hf download {model}`) so it is in the Hugging Face cache, "
    "or pass --model /path/to/a/local/diffusers/folder"
)


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


#: seconds a connection to the hub (or a download host) may take before it counts as "no network"
PROBE_TIMEOUT = 3.0
_probed: dict[tuple[str, int], bool] = {}


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host (or to the proxy that serves it) opens within ``timeout``.

    Asked once per host and process. The hub client retries a refused or silent connection for minutes per file;
    this answers in at most ``timeout`` seconds (name resolution included: it runs in a thread).
    """
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = parsed.hostname or ""
    address = (host, parsed.port or (443 if parsed.scheme == "https" else 80))
    if address not in _probed:
        answer = []

        def probe():
            try:
                socket.create_connection(address, timeout=timeout).close()
                answer.append(True)
            except OSError:
                pass

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _probed[address] = bool(answer)
    return _probed[address]


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def local_files_only(offline: bool | None = None) -> bool:
    """Nothing may be downloaded (offline mode) or nothing can be (the hub does not answer): use the cache only."""
    return is_offline(offline) or not host_reachable(hub_endpoint())


def unavailable_reason(e: Exception, offline: bool | None = None) -> str:
    """Why a hub model could not be loaded, in a few words."""
    if is_offline(offline):
        return "offline mode and not in the local cache"
    if not host_reachable(hub_endpoint()):
        return f"no network ({hub_endpoint()} does not answer) and not in the local cache"
    return _reason(e)


def resolve_model_folder(model: str | os.PathLike, *, offline: bool | None = None, required_file: str = "model_index.json",
                         what: str = "diffusers model") -> Path:
    """A local folder holding ``model``: the folder itself, or the hub snapshot (downloaded or cached)."""
    model = str(model)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.exists():
            raise ModelNotFoundError(f"model folder not found: {model}")
        if not path.is_dir() or not (path / required_file).exists():
            raise ModelNotFoundError(f"{model} is not a {what} folder (no {required_file} in it)")
        return path
    if model.count("/") != 1:
        raise ModelNotFoundError(f"model {model!r} is neither an existing folder nor a hub id of the form owner/name")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        from diffusers import DiffusionPipeline

        folder = DiffusionPipeline.download(model, local_files_only=local_files_only(offline))
    except Exception as e:  # network, cache, authentication, missing repo: all mean "not available"
        reason = unavailable_reason(e, offline)
        raise ModelNotFoundError(
            f"model {model!r} is not available ({reason}); " + HOW_TO_PROVIDE.format(model=model)
        ) from None
    return Path(folder)


def _reason(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}".lower()
    if "connect" in text or "name or service" in text or "resolve" in text or "timed out" in text:
        return "no network and not in the local cache"
    if "401" in text or "403" in text or "gated" in text:
        return "the repository needs a Hugging Face login"
    if "404" in text or "not found" in text:
        return "no such repository"
    if "not a local folder" in text or "valid model identifier" in text:
        return "no such local folder or hub repository"
    if "cannot find" in text or "local_files_only" in text or "offline" in text:
        return "not in the local cache and the hub could not be reached"
    return "its files could not be loaded"
