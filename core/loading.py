"""Loading through transformers, shared by every plugin that loads a model family.

- ``transformers_class(name, default, key)``: a recipe's ``model_type`` /
  ``tokenizer_type`` / ``processor_type`` as a transformers class.
- ``finish_tokenizer(recipe, tokenizer, stash)``: the recipe's added tokens and
  the pad-token fallback; records the tokens new to the vocabulary as
  ``stash[NEW_TOKENS]``.
- ``from_pretrained(recipe, quantization_config, cls)``: ``cls.from_pretrained``
  with the recipe's dtype, attention kernel, revision and quantization.

Public through ``ftcore.api``; nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path

from ftcore.errors import FtcoreError
from ftcore.log import get_logger
from ftcore.stash import NEW_TOKENS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_source(key, source, *, trust_remote_code=False, allow_pickle=False, weights=True, revision=None):
    """Refuse, before transformers touches it, a model source ftcore must not load silently.

    A local folder: its config.json must parse; one that ships its own code (``auto_map``, or a
    ``model_type`` transformers does not know) needs ``trust_remote_code: true``; with ``weights``,
    pickle-only weights need ``allow_pickle: true``, and a folder with no weights is refused. A
    value that is not a local path needs the Hub (``ftcore.hub.require_hub``). When code will run,
    one line says whose. Returns the kwargs to pass on (``use_safetensors`` when pickle is refused).
    """
    import json

    from ftcore import hub

    if source is None:
        return {}
    folder = Path(str(source)).expanduser()
    if trust_remote_code and weights:
        get_logger(__name__).warning(f"notice: trust_remote_code: true: the Python code of '{source}'"
                                     f"{f' (revision {revision})' if revision else ''} will run")
    if not folder.exists():
        if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
            raise FtcoreError(f"{key}: '{source}' does not exist")
        hub.require_hub(key, str(source))
        return {} if allow_pickle else ({"use_safetensors": True} if weights else {})
    if folder.is_dir():
        config = folder / "config.json"
        if config.exists():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise FtcoreError(f"{key}: '{config}' is not valid JSON ({exc})") from exc
            if not trust_remote_code:
                custom = "auto_map" in data
                model_type = data.get("model_type")
                if model_type and not custom:
                    try:
                        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
                        custom = model_type not in CONFIG_MAPPING
                    except ImportError:
                        custom = False
                if custom:
                    raise FtcoreError(f"{key}: '{source}' ships its own Python code (config.json "
                                      f"{'auto_map' if 'auto_map' in data else f'model_type {model_type!r}'}), "
                                      f"which ftcore runs only with `trust_remote_code: true` (set it only if "
                                      f"you trust that code)")
        elif weights:
            raise FtcoreError(f"{key}: '{source}' has no config.json, so it is not a model folder")
        if weights:
            check_weights(key, folder, allow_pickle)
    return {} if allow_pickle or not weights else {"use_safetensors": True}


def check_weights(key, folder, allow_pickle, adapter=False):
    """Refuse a folder whose weights are only pickle files (unless ``allow_pickle``), or that has none."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    safe = [p for p in files if p.name.endswith(".safetensors")]
    pickled = sorted(p for p in files if p.suffix in PICKLE_SUFFIXES
                     and not p.name.startswith(("training_args", "optimizer", "scheduler", "rng_state")))
    if safe:
        for p in safe:
            _check_safetensors(key, p)
        return
    if pickled:
        if allow_pickle:
            return
        raise FtcoreError(f"{key}: '{pickled[0]}' is a pickle file, and pickle files can run code when loaded; "
                          f"ftcore loads only safetensors unless told otherwise: convert it to safetensors "
                          f"(save_pretrained(..., safe_serialization=True)), or set `allow_pickle: true` if you "
                          f"trust its source")
    raise FtcoreError(f"{key}: '{folder}' holds no {'adapter ' if adapter else ''}weights "
                      f"(no *.safetensors file)")


def _check_safetensors(key, path):
    """A truncated or corrupt safetensors file is a clear error naming it."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if path.name.endswith(".index.json"):
                return
            if len(head) < 8:
                raise ValueError("shorter than its header")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise ValueError("its header runs past the end of the file")
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise ValueError("truncated: the tensors run past the end of the file")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise FtcoreError(f"{key}: '{path}' is not a valid safetensors file ({exc}); it may be truncated or "
                          f"corrupt: write it again") from exc


def transformers_class(name, default, key):
    """The transformers class called ``name`` (``default`` when unset or equal to its name)."""
    import transformers

    if not name or name == default.__name__:
        return default
    cls = getattr(transformers, name, None)
    if cls is None:
        raise FtcoreError(f"{key}: '{name}' is not a transformers class (for example {default.__name__})")
    return cls


def finish_tokenizer(recipe, tokenizer, stash=None):
    """The recipe's added tokens and the pad-token fallback (also for a processor's tokenizer)."""
    known = set(tokenizer.get_vocab())
    if recipe.special_tokens:
        tokenizer.add_special_tokens(dict(recipe.special_tokens))
    if recipe.tokens:
        tokenizer.add_tokens(list(recipe.tokens))
    # the tokens new to the vocabulary: their embeddings must be learned (prepare_model, adapters)
    if stash is not None:
        stash[NEW_TOKENS] = sorted(set(tokenizer.get_vocab()) - known, key=tokenizer.convert_tokens_to_ids)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        get_logger(__name__).warning(f"notice: the tokenizer has no pad token; using its eos token {tokenizer.eos_token!r} "
              f"for padding (padded positions are never trained). Set special_tokens.pad_token to choose.")
    return tokenizer


def from_pretrained(recipe, quantization_config, cls):
    """``cls.from_pretrained(base_model)`` with the recipe's dtype, attention and quantization."""
    import torch
    from transformers import AutoConfig

    from ftcore.device import precision, torch_dtype

    attention = recipe.attention or "sdpa"
    if attention.startswith("flash_attention") and not torch.cuda.is_available():
        get_logger(__name__).warning(f"notice: {attention} needs a CUDA GPU and this machine has none; loading the "
                                     f"model with attn_implementation: sdpa (the same attention computed by PyTorch)")
        attention = "sdpa"
    dtype = precision(recipe)
    if dtype == "fp16" and recipe.adapter is None:
        dtype = "fp32"  # fp16 mixed precision keeps trainable weights in fp32
    kwargs = {"dtype": torch_dtype(dtype), "attn_implementation": attention,
              "trust_remote_code": bool(recipe.trust_remote_code), "revision": recipe.revision_of_model}
    allow_pickle = bool(getattr(recipe, "allow_pickle", False))
    kwargs.update(check_source("base_model", recipe.base_model, trust_remote_code=bool(recipe.trust_remote_code),
                               allow_pickle=allow_pickle, revision=recipe.revision_of_model))
    if recipe.base_model_config:
        check_source("base_model_config", recipe.base_model_config, weights=False,
                     trust_remote_code=bool(recipe.trust_remote_code))
        kwargs["config"] = AutoConfig.from_pretrained(recipe.base_model_config,
                                                      trust_remote_code=bool(recipe.trust_remote_code))
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        return cls.from_pretrained(recipe.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"base_model: cannot load '{recipe.base_model}': {exc}") from exc
