"""Recipes from a URL, pinned by their SHA-256: ``https://host/recipe.yaml#sha256=HEX``.

Downloaded once (urllib, a timeout, a size limit), checked against the pin every time it is read, and kept
in ``$FTCORE_CACHE/recipes/HEX/NAME.yaml`` so it works offline afterwards. A URL without a pin, or whose
bytes do not match it, is refused before anything runs (docs/recipes.md, "Remote recipes").
"""

from __future__ import annotations

import re
from pathlib import Path

from ftcore.errors import RecipeError

REMOTE_MAX_BYTES = 1 << 20  # a recipe is a few KiB; a bigger download is refused
REMOTE_TIMEOUT_S = 30
_URL = re.compile(r"^https?://", re.IGNORECASE)
_PIN = re.compile(r"sha256=([0-9a-fA-F]{64})")
_REMOTE: dict = {}  # resolved cached file -> the URL it was downloaded from (this process)


def is_remote(source) -> bool:
    return isinstance(source, str) and bool(_URL.match(source.strip()))


def remote_url(path) -> str | None:
    """The URL a cached recipe file came from (in this process), or None for a local file."""
    try:
        return _REMOTE.get(Path(path).resolve())
    except OSError:
        return None


def recipe_cache() -> Path:
    """Where pinned remote recipes are kept (``HEX/NAME.yaml``): ``$FTCORE_CACHE/recipes`` or
    ``~/.cache/ftcore/recipes``."""
    import os

    root = os.environ.get("FTCORE_CACHE")
    if root:
        return Path(root).expanduser() / "recipes"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ftcore" / "recipes"


def _download(url: str) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "ftcore"}),
                                    timeout=REMOTE_TIMEOUT_S) as answer:
            data = answer.read(REMOTE_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise RecipeError([(None, f"cannot download the recipe: HTTP {exc.code} {exc.reason}")], source=url) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RecipeError([(None, f"cannot download the recipe ({reason}); a pinned recipe downloaded before is "
                                  f"read from {recipe_cache()} offline")], source=url) from None
    if len(data) > REMOTE_MAX_BYTES:
        raise RecipeError([(None, f"the download is larger than {REMOTE_MAX_BYTES:,} bytes: not a recipe")],
                          source=url)
    return data


def _file_name(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    name = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])).lstrip(".")
    name = name or "recipe.yaml"
    return name if name.endswith((".yaml", ".yml")) else name + ".yaml"


def fetch_remote(source: str) -> Path:
    """A recipe URL pinned with ``#sha256=HEX``: the cached file (downloaded once, checked every time)."""
    import hashlib
    import os
    import tempfile

    url, _, fragment = source.strip().partition("#")
    pin = _PIN.fullmatch(fragment)
    if not pin:
        try:
            got = f"; this file's is {hashlib.sha256(_download(url)).hexdigest()}: read it, then pin it with " \
                  f"{url}#sha256=<that hash>"
        except RecipeError:
            got = ""
        raise RecipeError([(None, f"a remote recipe must be pinned by its SHA-256: {url}#sha256=<64 hex digits>"
                                  f"{got}")], source=url)
    want = pin.group(1).lower()
    cached = recipe_cache() / want / _file_name(url)  # the URL's file name: output_dir defaults to ./outputs/<stem>
    try:
        if hashlib.sha256(cached.read_bytes()).hexdigest() == want:
            _REMOTE[cached.resolve()] = url
            return cached
    except OSError:
        pass
    data = _download(url)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise RecipeError([(None, f"the SHA-256 of the downloaded file is {got}, not the pinned {want}: the file "
                                  f"changed or the pin is wrong; nothing was run. Read it, and if you trust it "
                                  f"pin it with {url}#sha256={got}")], source=url)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{want}.", dir=cached.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, cached)
    except OSError as exc:
        raise RecipeError([(None, f"cannot write the recipe cache {cached.parent}: {exc.strerror or exc}; set "
                                  f"FTCORE_CACHE=<a writable folder>")], source=url) from None
    _REMOTE[cached.resolve()] = url
    return cached
