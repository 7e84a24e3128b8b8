"""Llama 3.2 Vision (Mllama): fine-tune on conversations with images.

The plugin claims a run when the base model's config has a ``vision_config``
(no extra recipe key), and then:

- ``load_tokenizer``: the model's processor (``AutoProcessor``, or
  ``processor_type``) with its PIL image processor (no torchvision); the run
  gets the processor's tokenizer, and the processor goes in ``stash[PROCESSOR]``.
- data: the handler of ``image`` content parts (``register_content_parts``).
  Conversation rows (``type: chat_template``, ``sharegpt``) may give a
  message's content as a list of parts, ``{"type": "image", "path" | "url" |
  "base64": ...}`` and ``{"type": "text", "text": ...}``, or an ``images``
  column beside string contents. Each image becomes ``<|image|>`` in the text
  (``image_part``); ``finish_images`` resolves every image (a path against the
  data file's folder) and opens it once at preparation, so a missing or corrupt
  image stops the run naming the file, row and image (or is skipped and counted
  with ``on_invalid_example: skip``); the example keeps only references, in its
  ``images`` extra.
- ``load_model``: ``AutoModelForImageTextToText`` (``model_type`` to choose);
  quantization (``load_in_4bit``) skips the vision tower and projector, which
  stay 16-bit.
- ``prepare_model``: the vision tower and projector are frozen
  (``freeze_mm_modules``, default true; ``stash[FROZEN_MODULES]`` keeps them
  so under full fine-tuning); LoRA by default targets the language model's
  self-attention, cross-attention and MLP projections only
  (``stash[ADAPTER_TARGETS]``, ``stash[ADAPTER_SCOPE]``).
- ``build_collator``: ``VisionCollator`` reads each example's ``images`` extra,
  loads the images lazily through a bounded cache and builds ``pixel_values``,
  ``aspect_ratio_ids``, ``aspect_ratio_mask`` and ``cross_attention_mask`` per
  batch.
- evaluation: the ``generation`` plugin's evaluator generates replies for
  image rows through this collator (its older name ``exact_match`` reads
  ``vision.eval_max_new_tokens``).

Recipe section ``vision:`` (``max_images``, ``image_cache_size``,
``eval_max_new_tokens``); top-level ``image_size``, ``image_resize_algorithm``,
``freeze_mm_modules``, ``processor_type`` (Axolotl's keys). docs/vision.md.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ftcore.api import (ADAPTER_SCOPE, ADAPTER_TARGETS, FROZEN_MODULES, IGNORE_INDEX, PROCESSOR, FtcoreError,
                        PaddingCollator, RecipeKeys, RowError, finish_tokenizer, from_pretrained, get_logger, hookimpl,
                        packs, transformers_class)

FTCORE_CONTRACT = "1"

log = get_logger(__name__)

IMAGE_TOKEN = "<|image|>"
LANGUAGE_MODEL = r"(.*\.)?language_model"  # where adapters go while the vision modules are frozen
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MULTIMODAL_MODULES = ("vision_model", "multi_modal_projector")
SUPPORTED = ("mllama",)


class VisionOptions(BaseModel):
    """Recipe section ``vision:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_images: int = Field(1, ge=1, description="images one row may have (Llama 3.2 Vision is trained with one)")
    image_cache_size: int = Field(256, ge=0, description="decoded images the collator keeps in memory")
    eval_max_new_tokens: int = Field(32, ge=1, description="tokens the exact_match evaluator (the generation plugin's older name) generates at most")


class VisionKeys(RecipeKeys):
    """Axolotl's multimodal keys (top level)."""

    processor_type: str | None = Field(None, description="processor class for multimodal models")
    image_size: int | list[int] | None = Field(
        None, description="vision: resize images to this (or [height, width]) first")
    image_resize_algorithm: Literal["bilinear", "bicubic", "lanczos", "nearest"] | None = Field(
        None, description="vision: how image_size resizes; default bilinear")
    freeze_mm_modules: bool | None = Field(
        None, description="vision: keep the vision tower and projector frozen (default true)")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(VisionKeys)


def options(recipe) -> VisionOptions:
    section = recipe.section("vision") if hasattr(recipe, "section") else None
    return section or VisionOptions()


# ── which runs are vision runs ───────────────────────────────────────────────


@functools.lru_cache(maxsize=16)
def _model_type(source: str, revision, trust_remote_code: bool, local_only: bool) -> str | None:
    """The config's ``model_type`` when it has a vision tower, ``""`` when it has none, None when the
    config cannot be read here (offline, say: the huggingface plugin reports it when it loads the model).

    A local model folder's ``config.json`` is read as JSON (cheap: ``ftcore validate`` stays light);
    with ``local_only`` nothing else is tried, so validation never waits on the network.
    """
    folder = Path(source).expanduser()
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return config.get("model_type", "") if isinstance(config.get("vision_config"), dict) else ""
    if local_only:
        return None
    from transformers import AutoConfig

    config = None
    for cached in (True, False):  # the Hugging Face cache first: no network round trip when it has the config
        try:
            config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code,
                                                local_files_only=cached)
            break
        except Exception:
            continue
    if config is None:
        return None
    return config.model_type if getattr(config, "vision_config", None) is not None else ""


def vision_model_type(recipe, local_only: bool = False) -> str | None:
    """``"mllama"`` (or another multimodal model type) when the recipe's base model has a vision tower;
    ``""`` when it has none; None when its config cannot be read."""
    return _model_type(recipe.base_model_config or recipe.base_model, recipe.revision_of_model,
                       bool(recipe.trust_remote_code), local_only)


def freezes_vision(recipe) -> bool:
    return recipe.freeze_mm_modules is not False


@hookimpl(trylast=True)
def recipe_sections(register):
    register("vision", VisionOptions)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    kind = vision_model_type(recipe, local_only=True)  # a Hub model is checked when the run loads it
    if kind is None:
        return
    if not kind:
        for key in ("image_size", "image_resize_algorithm"):
            if getattr(recipe, key) is not None:
                error(key, f"is set but {recipe.base_model} is not a vision model (its config has no "
                           f"vision_config); remove {key}")
        return
    if kind not in SUPPORTED:
        error("base_model", f"is a '{kind}' vision model; ftcore fine-tunes {', '.join(SUPPORTED)} "
                            f"(Llama 3.2 Vision) vision models")
    if packs(recipe):
        error("sample_packing", "cannot pack conversations with images (each example's images and "
                                "cross-attention belong to its own rows); set sample_packing: false "
                                "(and eval_sample_packing: false) for vision models")


# ── images: references in the rows, opened at preparation and in the collator ──


def image_token(tokenizer) -> str | None:
    """The tokenizer's image token when it has one (a vision model's tokenizer), else None."""
    token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return token


SOURCES = ("path", "url", "base64", "image")


def _has_source(part: dict) -> bool:
    return any(part.get(key) is not None for key in SOURCES)


def reference(value, base: Path, where: str) -> dict:
    """An image part, or an ``images`` column item, -> ``{"path"}`` (absolute), ``{"url"}`` or ``{"base64"}``.

    A Hugging Face dataset's image column gives PIL images (or ``{"bytes", "path"}``): kept as base64 PNG.
    """
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"base64": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        return {"base64": base64.b64encode(value["bytes"]).decode("ascii")}
    if isinstance(value, dict):
        given = [key for key in SOURCES if value.get(key) is not None]
        if len(given) != 1 or not isinstance(value[given[0]], str):
            raise RowError(f"{where}: an image needs exactly one of path, url or base64 (a string), got "
                           f"{json.dumps(value)[:200]}", "bad image")
        key, text = given[0], value[given[0]]
        if key == "image":
            return reference(text, base, where)
    elif isinstance(value, str):
        key, text = ("url" if re.match(r"(https?|file)://", value) else
                     "base64" if value.startswith("data:image/") else "path"), value
    else:
        raise RowError(f"{where}: an image is a path, URL, base64 string or an object with one of them, "
                       f"got {type(value).__name__}", "bad image")
    if key == "path":
        path = Path(text).expanduser()
        return {"path": str(path if path.is_absolute() else (base / path).resolve())}
    return {key: text}


def describe(ref: dict) -> str:
    if "dataset" in ref:
        return f"{ref['dataset']} row {ref['row'] + 1} {ref['column']}[{ref['index']}]"
    if "base64" in ref:
        return f"base64 image ({len(ref['base64'])} characters)"
    return ref.get("path") or ref["url"]


def read_bytes(ref: dict) -> bytes:
    """The image file's bytes; ``OSError`` / ``ValueError`` saying why not."""
    if "path" in ref:
        return Path(ref["path"]).read_bytes()
    if "url" in ref:
        from urllib.request import urlopen

        with urlopen(ref["url"], timeout=60) as response:  # noqa: S310 (the user's own data)
            return response.read()
    data = ref["base64"]
    if data.startswith("data:"):
        data = data.partition(",")[2]
    return base64.b64decode(data, validate=True)


@functools.lru_cache(maxsize=4)
def _hub_dataset(path, name, split, revision, data_files):
    """A Hub data set, memory-mapped by ``datasets``: a row's images decode only when read."""
    import datasets

    return datasets.load_dataset(path, name, split=split, revision=revision,
                                 data_files=json.loads(data_files) if data_files else None)


def open_image(ref: dict):
    """The decoded image, in RGB."""
    from PIL import Image

    if "dataset" in ref:  # an image of a Hub data set's image column, by row
        table = _hub_dataset(ref["dataset"], ref.get("name"), ref["split"], ref.get("revision"),
                             json.dumps(ref.get("data_files")) if ref.get("data_files") else None)
        value = table[ref["row"]][ref["column"]]
        value = value[ref["index"]] if isinstance(value, list) else value
        if not isinstance(value, Image.Image):
            value = open_image(reference(value, Path.cwd(), describe(ref)))
        return value.convert("RGB")
    with Image.open(io.BytesIO(read_bytes(ref))) as image:
        image.load()
        return image.convert("RGB")


def check_image(ref: dict, where: str) -> None:
    """Open and decode the image once, so a bad one stops preparation instead of training."""
    try:
        open_image(ref)
    except FileNotFoundError:
        raise RowError(f"{where}: image file {ref['path']} does not exist", "missing image") from None
    except Exception as exc:  # PIL raises many kinds for a corrupt or unsupported file
        raise RowError(f"{where}: cannot read image {describe(ref)}: {type(exc).__name__}: {exc}",
                       "unreadable image") from None


def row_images(found: list, field: str, column: list, messages: list, token: str) -> list:
    """The row's images in order: image parts (``found``) with their sources, or the ``field`` column.

    Image parts without a source (``{"type": "image"}``, as Hugging Face vision data sets write them)
    stand for the column's images, in order (or by their ``index``). String contents with a column
    get the images' tokens before the first user message's text. Returns ``[(image, index in the
    column or None)]``.
    """
    placeholders = [part for part in found if not _has_source(part)]
    if not column:
        if placeholders:
            raise RowError(f"{len(placeholders)} image part(s) give no path, url or base64, and the row has no "
                           f"'{field}' column to take them from", "bad image")
        return [(part, None) for part in found]
    if found:
        if len(placeholders) != len(found):
            raise RowError(f"the row has both image parts with their own source and a '{field}' column; use one",
                           "bad image")
        if len(found) != len(column):
            raise RowError(f"the messages have {len(found)} image part(s) but '{field}' holds {len(column)} "
                           f"image(s)", "image count")
        order = [part.get("index") for part in found]
        if not (all(isinstance(i, int) and 0 <= i < len(column) for i in order) and len(set(order)) == len(order)):
            order = list(range(len(column)))
        return [(column[i], i) for i in order]
    placed = sum(m["content"].count(token) for m in messages)
    if placed == 0:  # string contents: the images go before the first user message's text
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise RowError(f"'{field}' is given but the conversation has no user message to show them in",
                           "bad image")
        first["content"] = token * len(column) + first["content"]
    return [(image, i) for i, image in enumerate(column)]


def _hub_reference(spec, row: int, field: str, index: int) -> dict:
    """An image of a Hub data set's row, read again (memory-mapped) when a batch needs it."""
    return {"dataset": spec.path, "name": spec.name, "split": spec.split or "train", "revision": spec.revision,
            "data_files": spec.data_files, "row": row - 1, "column": field, "index": index}


def image_part(part) -> str:
    """The ``image`` content-part handler: an image part of a message -> the image token standing for it."""
    token = image_token(part.row.ctx.tokenizer)
    if token is None:
        raise RowError(f"{part.where}: unsupported content part (an image): the tokenizer has no {IMAGE_TOKEN} "
                       f"token; train a vision model (Llama 3.2 Vision) on rows with images", "unsupported content")
    return token


def finish_images(row) -> None:
    """Once per conversation row: its images (parts, or the ``images`` column) counted against their
    tokens, resolved (a path against the data file's folder), opened once, and kept as references in
    the example's ``images`` extra, which ``VisionCollator`` reads.

    Images of a Hub data set's column (decoded by ``datasets``) are kept as a reference to their
    row; every other image is opened here, so a bad one is a bad row before training starts.
    """
    ctx, spec = row.ctx, row.dataset
    field, column = row.columns.get("image", ("images", []))
    token = image_token(ctx.tokenizer)
    if token is None:
        if column:
            raise RowError(f"field '{field}' holds images, but the tokenizer has no image token: "
                           f"train a vision model (Llama 3.2 Vision) on it", "unsupported content")
        return
    images = row_images([part.data for part in row.parts.get("image", [])], field, column, row.messages, token)
    row.untrained.add(token)  # also where a column's images were placed: image tokens never train
    placed = sum(m["content"].count(token) for m in row.messages)
    if not images:
        if placed:
            raise RowError(f"the text has {token} but the row gives no image", "image count")
        return
    if placed != len(images):
        raise RowError(f"the text has {placed} {token} token(s) but the row gives {len(images)} image(s)",
                       "image count")
    limit = options(ctx.recipe).max_images
    if len(images) > limit:
        raise RowError(f"{len(images)} images, more than the {limit} the model accepts in one row "
                       f"(vision.max_images)", "too many images")
    file, number = ctx.extras.get("file"), ctx.extras.get("row")
    hub = file == spec.path and number is not None and not Path(file).exists()
    base = Path(file).parent if file else Path.cwd()
    refs = []
    for i, (image, index) in enumerate(images):
        if hub and index is not None and hasattr(image, "size"):
            refs.append(_hub_reference(spec, number, field, index))
            continue
        ref = reference(image, base, f"image {i + 1}")
        check_image(ref, f"image {i + 1}")
        refs.append(ref)
    row.extras["images"] = refs


image_part.finish = finish_images  # the row-level step (see ftcore.api.ContentRow)


@hookimpl(trylast=True)
def register_content_parts(register):
    register("image", image_part)


# ── tokenizer/processor and model ────────────────────────────────────────────


@hookimpl(trylast=True)
def load_tokenizer(recipe, stash):
    kind = vision_model_type(recipe)
    if not kind:
        return None
    if kind not in SUPPORTED:
        raise FtcoreError(f"base_model: '{kind}' vision models are not supported; ftcore fine-tunes "
                          f"{', '.join(SUPPORTED)} (Llama 3.2 Vision)")
    from transformers import AutoProcessor

    if packs(recipe):  # validate_recipe says so too when the config can be read before the run
        raise FtcoreError("sample_packing: cannot pack conversations with images; set sample_packing: false "
                          "(and eval_sample_packing: false) for vision models")
    cls = transformers_class(recipe.processor_type, AutoProcessor, "processor_type")
    source = recipe.tokenizer_config or recipe.base_model
    try:  # the PIL image processor: the fast one needs torchvision
        processor = cls.from_pretrained(source, trust_remote_code=recipe.trust_remote_code,
                                        revision=recipe.revision_of_model, backend="pil")
    except OSError as exc:
        raise FtcoreError(f"base_model: cannot load a processor from '{source}': {exc}") from exc
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise FtcoreError(f"processor_type: {type(processor).__name__} has no image processor and tokenizer")
    stash[PROCESSOR] = processor
    return finish_tokenizer(recipe, processor.tokenizer, stash)


@hookimpl(trylast=True)
def load_model(recipe, quantization_config):
    if not vision_model_type(recipe):
        return None
    from transformers import AutoModelForImageTextToText

    if quantization_config is not None and getattr(quantization_config, "llm_int8_skip_modules", None) is None:
        # the language model is quantized; the vision tower, projector and output head stay 16-bit
        quantization_config.llm_int8_skip_modules = [rf".*{name}" for name in MULTIMODAL_MODULES] + ["lm_head"]
    cls = transformers_class(recipe.model_type, AutoModelForImageTextToText, "model_type")
    return from_pretrained(recipe, quantization_config, cls)


def _multimodal_modules(model):
    """The vision tower and projector modules of an Mllama model (wherever transformers nests them)."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in MULTIMODAL_MODULES and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return found


@hookimpl(trylast=True)
def prepare_model(recipe, model, tokenizer, stash):
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is None:
        return
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        text_config.use_cache = False
    stash[ADAPTER_TARGETS] = list(LORA_TARGETS)
    if freezes_vision(recipe):
        stash[ADAPTER_SCOPE] = LANGUAGE_MODEL  # adapters stay in the language model
        # full fine-tuning keeps them frozen too (the full plugin reads this)
        stash[FROZEN_MODULES] = [rf"(^|\.){re.escape(name)}\." for name, _module in _multimodal_modules(model)]
        log.info(f"vision: the vision tower and projector are frozen ({_freeze(model):,} parameters; "
              f"freeze_mm_modules: false trains them)")


def _freeze(model) -> int:
    frozen = 0
    for _name, module in _multimodal_modules(model):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


@hookimpl(trylast=True)
def build_collator(recipe, tokenizer, stash):
    processor = stash.get(PROCESSOR)
    if processor is None:
        return None
    import torch

    if packs(recipe):
        raise FtcoreError("sample_packing: vision examples cannot be packed; set sample_packing: false")
    padding = PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None,
                              pad_to_length=recipe.sequence_len if recipe.pad_to_sequence_len else None)
    return VisionCollator(processor.image_processor, tokenizer.convert_tokens_to_ids(image_token(tokenizer)),
                          padding, cache_size=options(recipe).image_cache_size, image_size=recipe.image_size,
                          resize_algorithm=recipe.image_resize_algorithm)


@hookimpl(trylast=True)
def save_artifacts(recipe, model, tokenizer, output_dir, stash):
    processor = stash.get(PROCESSOR)
    if processor is None:
        return None
    processor.chat_template = tokenizer.chat_template  # the template training used
    before = {p.name for p in Path(output_dir).iterdir()}
    processor.save_pretrained(str(output_dir))
    return sorted({p.name for p in Path(output_dir).iterdir()} - before)


# ── batches ──────────────────────────────────────────────────────────────────


def cross_attention_mask(input_ids, token_id: int, num_tiles: list, max_tiles: int):
    """``[batch, length, images, max_tiles]``: 1 where a token attends to a tile of an image.

    Image k of a row is seen from its own ``<|image|>`` token up to the next
    image token that does not directly follow another one (adjacent image
    tokens form a group whose images are seen together), or to the end.
    """
    import torch

    rows, length = input_ids.shape
    most = max((len(tiles) for tiles in num_tiles), default=0)
    mask = torch.zeros((rows, length, max(most, 1), max_tiles), dtype=torch.long)
    for row in range(rows):
        positions = (input_ids[row] == token_id).nonzero().view(-1).tolist()
        group_starts = [p for i, p in enumerate(positions) if i == 0 or positions[i - 1] != p - 1]
        for k, (position, tiles) in enumerate(zip(positions, num_tiles[row])):
            end = next((s for s in group_starts if s > position), length)
            mask[row, position:end, k, :tiles] = 1
    return mask


class VisionCollator:
    """Padded text (``PaddingCollator``) plus the images of each example, for Mllama.

    Images are opened only here, through a least-recently-used cache of
    ``cache_size`` decoded images, so a large image set never sits in memory.
    ``image_size`` (``[height, width]`` or one number) resizes each image
    first with ``resize_algorithm``; the image processor then tiles it.
    Labels at image tokens are -100, whatever the data said.
    """

    RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}

    def __init__(self, image_processor, image_token_id: int, padding, cache_size: int = 256,
                 image_size=None, resize_algorithm=None):
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.padding = padding
        self.cache_size = cache_size
        self.cache: OrderedDict = OrderedDict()
        if isinstance(image_size, int):
            image_size = [image_size, image_size]
        self.image_size = tuple(image_size) if image_size else None
        self.resample = self.RESAMPLE[resize_algorithm or "bilinear"]

    def image(self, ref: dict):
        key = json.dumps(ref, sort_keys=True)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        try:
            image = open_image(ref)
        except Exception as exc:
            raise FtcoreError(f"cannot read image {describe(ref)} (it was readable when the data was "
                              f"prepared): {type(exc).__name__}: {exc}") from exc
        if self.image_size:
            height, width = self.image_size
            image = image.resize((width, height), resample=self.resample)
        if self.cache_size:
            self.cache[key] = image
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return image

    def __call__(self, examples):
        batch = self.padding(examples)
        ids = batch["input_ids"]
        batch["labels"][ids == self.image_token_id] = IGNORE_INDEX
        placed = (ids == self.image_token_id).sum(dim=1).tolist()
        # an image whose token was cut off (excess_length_strategy: truncate) is not shown
        refs = [list(e.get("images") or [])[:n] for e, n in zip(examples, placed)]
        if not any(refs):
            return batch
        images = [[self.image(ref) for ref in row] for row in refs]
        out = self.image_processor(images=images, return_tensors="pt")
        num_tiles = out.pop("num_tiles")
        batch.update({k: out[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")})
        batch["cross_attention_mask"] = cross_attention_mask(ids, self.image_token_id, num_tiles,
                                                             self.image_processor.max_image_tiles)
        return batch
