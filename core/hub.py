"""Is the Hugging Face Hub reachable? Asked before anything would wait on it.

``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) set to a true value
means offline. Otherwise one TCP connection to the Hub's host, with a short timeout, tells; the
answer is kept for the process. ``require_hub`` turns "offline" into one clear line naming the
recipe key, instead of minutes of retries.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

from ftcore.errors import FtcoreError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TIMEOUT = 3.0


def offline_variable() -> str | None:
    """The environment variable that puts this process offline, or None."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@lru_cache(maxsize=1)
def _reachable() -> bool:
    host, port = _endpoint()
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return True
    except OSError:
        return False


def offline_reason() -> str | None:
    """Why the Hub cannot be reached ("HF_HUB_OFFLINE=1 is set", "no network: ..."), or None when it can."""
    name = offline_variable()
    if name:
        return f"{name}={os.environ[name]} is set"
    if not _reachable():
        host, port = _endpoint()
        return f"no network: {host}:{port} cannot be reached"
    return None


def cached(repo_id: str, kind: str = "model") -> bool:
    """True when the Hugging Face cache holds ``repo_id`` (``kind``: model or dataset): it loads offline."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    from pathlib import Path

    folder = Path(HF_HUB_CACHE) / f"{kind}s--{repo_id.replace('/', '--')}"
    if kind == "dataset":  # datasets' own cache keeps downloaded Hub datasets too
        datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(HF_HUB_CACHE).parent / "datasets"))
        if any(datasets_cache.glob(f"{repo_id.replace('/', '___')}*")):
            return True
    return (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir())


def require_hub(key: str, value: str, what: str = "a Hugging Face Hub id", kind: str = "model") -> None:
    """Raise one clear ``FtcoreError`` when ``value`` (read from recipe ``key``) needs the Hub and it is offline.

    Call only for values that are not local paths: a local folder or file never needs the Hub. A repository
    already in the Hugging Face cache passes (it loads offline).
    """
    if cached(value, kind):
        return
    reason = offline_reason()
    if reason:
        raise FtcoreError(f"{key}: '{value}' is not a local file or folder, so it would be {what}, but the Hub "
                          f"cannot be reached ({reason}); use a local path, or fetch it first where the Hub is "
                          f"reachable (it is then read from the Hugging Face cache)")
