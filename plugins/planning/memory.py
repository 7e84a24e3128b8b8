"""The arithmetic of a training run's memory per GPU, from a model's ``config.json``; no torch.

    config, source = architecture("meta-llama/Llama-3.1-8B-Instruct", plugins)
    result = estimate(config, Settings.from_recipe(recipe), gpu_memory_bytes=parse_size("24GiB"))
    result.fits, result.breakdown, result.suggestions

What the breakdown describes is what ftcore does (``plugins/qlora.py``, ``plugins/lora.py``,
``plugins/full.py``, ``core/loading.py``, ``core/device.py``):

- **weights**: the base loads in the run's precision (``bf16: auto`` is bf16 on a GPU that has it, fp32 on
  CPU; fp16 full fine-tuning keeps fp32 weights). ``load_in_4bit`` stores every decoder linear layer in nf4,
  0.5 bytes per parameter plus its quantization constants (an fp32 absmax per 64 values, 0.0625 bytes per
  parameter, or with double quantization an 8-bit one, 0.0156, plus a nested fp32 absmax per 256 blocks);
  the embeddings, the output head, biases and the vision tower stay 16-bit and the norms go to fp32.
  ``load_in_8bit``: 1 byte per linear parameter plus an fp32 scale per row.
- **adapter**: LoRA's A and B matrices, r x (in + out) per targeted linear layer, in fp32 (peft upcasts
  adapter weights to fp32).
- **gradients**: one per trainable parameter, in its dtype.
- **optimizer_states**: torch AdamW keeps two states in the parameter's dtype; 8-bit AdamW
  (``adamw_8bit``, ``paged_adamw_8bit``, ...) about 2 bytes per parameter; paged states may move to CPU
  memory under pressure (counted here on the GPU). Under DeepSpeed ZeRO the optimizer holds an fp32 master
  copy of 16-bit trainable weights as well.
- **activations**: micro batch x sequence x layers x hidden: without gradient checkpointing every layer's
  saved tensors (the residual stream, norms, q/k/v, attention output, the MLP's gate/up/product; LoRA
  dropout's copies of the inputs); with it, one hidden state per layer, plus one layer's full set and its
  gradients while that layer is recomputed.
- **logits**: the head's output over the vocabulary and the loss's fp32 copy, log-softmax and their
  gradients, about 16 bytes per position and vocabulary entry; ``chunked_cross_entropy`` scores one chunk
  of positions at a time, dividing that by the number of chunks.
- **optimizer_step**: torch AdamW's temporaries inside ``step()``: on a GPU its default ``foreach``
  implementation takes one more copy of the trainable weights (``sqrt`` of the second moments for a whole
  parameter group), on a CPU its for-loop implementation two copies of the largest trainable tensor.
  ``adamw_torch_fused``, bitsandbytes' and DeepSpeed's optimizers update in place.
- a full fine-tuning whose output head gets its gradient in pieces (a chunk at a time, or tied to the
  embeddings) holds one more head-sized gradient while each piece is added (counted in **gradients**).
- **overhead**: on a GPU the CUDA context, cuBLAS workspaces and the caching allocator's slack (1 GiB); on
  a CPU what the run loads besides tensors (libraries imported at run time, the data, the tokenizer, the
  Trainer: 180 MiB, measured by ``benchmarks/estimate.py`` with a tiny model); plus the 16-bit copy of one
  weight that a quantized layer dequantizes at a time.

These do not all exist at once. The breakdown is the memory at the peak, the largest of three moments of
a step: the loss's backward (saved activations and the logits), the layers' backward (with gradient
checkpointing, a recomputed layer), and the optimizer step (activations and logits freed, its
temporaries). ``Estimate.peak`` names the moment; entries that do not exist then are 0.

ZeRO-1 divides the optimizer states by the number of GPUs, ZeRO-2 also the gradients, ZeRO-3 and FSDP's
full sharding also the weights; offloading moves the optimizer states (and with parameter offload the
weights) to CPU memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ftcore.api import FtcoreError

GiB = 1024 ** 3
GB = 1000 ** 3

# Bytes per parameter of the storage formats
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "nf4": 0.5}
NF4_CONSTANTS = 4 / 64  # an fp32 absmax per 64-value block
NF4_CONSTANTS_DOUBLE = 1 / 64 + 4 / (64 * 256)  # 8-bit absmax per block, fp32 absmax per 256 blocks
LOGIT_BYTES = 16  # per position x vocabulary entry: the logits, the loss's fp32 copy, log-softmax, gradients
CUDA_OVERHEAD = 1 * GiB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack
CPU_OVERHEAD = 180 * 1024 ** 2  # a CPU run's libraries loaded at run time, data, tokenizer, Trainer (measured)
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit", "paged_adamw_32bit_8bit", "lion_8bit",
                        "paged_lion_8bit", "ademamix_8bit", "paged_ademamix_8bit")
STATELESS_OPTIMIZERS = ("sgd",)
ONE_STATE_OPTIMIZERS = ("lion_32bit", "paged_lion_32bit", "adafactor")
CHUNKED_LOSS_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
                        "mllama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRESET_STAGES = {"zero1": (1, False), "zero2": (2, False), "zero3": (3, False), "zero3_offload": (3, True)}


# ── sizes ─────────────────────────────────────────────────────────────────────

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": GiB, "gb": GB, "gib": GiB, "t": 1024 ** 4, "tb": 1000 ** 4, "tib": 1024 ** 4}


def parse_size(text, what: str = "--gpu-memory") -> int:
    """Bytes from ``24GiB`` (2^30), ``80GB`` (10^9), ``24G`` (GiB, as GPU sizes are said), ``512MiB``, ``1e9``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise FtcoreError(f"{what}: '{text}' is not a memory size; write a number with a unit, e.g. 24GiB, "
                          f"80GB, 16G (GiB), 512MiB")
    return int(float(match.group(1)) * _UNITS[unit])


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# ── the model's architecture ─────────────────────────────────────────────────


def architecture(base_model: str, plugins=None) -> tuple[dict, str]:
    """``(config.json content, where it came from)`` for a Hub id or a local folder, without downloading weights.

    Looked up in order: the registered models (``register_models``: "ftcore's table"), a local folder with a
    ``config.json``, the Hugging Face cache, and the Hub when online (only ``config.json`` is fetched).
    """
    if plugins is not None:
        from ftcore.api import model_facts

        facts = model_facts(plugins, base_model)
        if facts is not None:
            return dict(facts.config), "ftcore's table"
    folder = Path(os.path.expanduser(str(base_model)))
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise FtcoreError(f"base_model: the folder {folder} has no config.json; point base_model at a model "
                              f"folder (config.json and weights) or a Hub id")
        return _read_config(path), f"local folder {folder}"
    cached = _cached_config(str(base_model))
    if cached is not None:
        return _read_config(cached), "Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on"):
        try:
            from huggingface_hub import hf_hub_download

            return _read_config(Path(hf_hub_download(str(base_model), "config.json"))), "the Hub"
        except Exception as exc:  # noqa: BLE001 - no network, gated, unknown id: all the same to the user
            raise FtcoreError(f"base_model: '{base_model}' is not in ftcore's table of models, not a local folder, "
                              f"not in the Hugging Face cache, and its config.json could not be fetched from the "
                              f"Hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    raise FtcoreError(f"base_model: '{base_model}' is not in ftcore's table of models, not a local folder and not in "
                      f"the Hugging Face cache (HF_HUB_OFFLINE is set, so the Hub was not asked); download it "
                      f"first or point base_model at a folder with its config.json")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"{path}: not a readable config.json ({exc})") from exc
    if not isinstance(config, dict):
        raise FtcoreError(f"{path}: config.json is not a JSON object")
    return config


def _cached_config(model_id: str) -> Path | None:
    if model_id.count("/") != 1:
        return None
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    snapshots = Path(cache) / ("models--" + model_id.replace("/", "--")) / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


# ── parameter counts ─────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Counts:
    """Parameters by kind: input embeddings, output head (0 when tied), decoder linear weights (what 4-bit
    quantizes), other (norms, biases, gates), the vision tower and projector; ``total`` their sum."""

    embeddings: int
    head: int
    linear: int
    other: int
    vision: int = 0
    layers: int = 0
    hidden: int = 0
    intermediate: int = 0
    kv_dim: int = 0
    vocab: int = 0
    largest_linear: int = 0
    linear_shapes: tuple = ()  # ((name, in, out, count), ...) of the decoder's linear layers

    @property
    def total(self) -> int:
        return self.embeddings + self.head + self.linear + self.other + self.vision


def text_config(config: dict) -> dict:
    return config.get("text_config") or config


def _get(config: dict, key: str, default=None):
    value = config.get(key, default)
    if value is None and default is not None:
        return default
    return value


def parameter_counts(config: dict) -> Counts:
    """The parameter counts of a decoder (Llama, Qwen2, Mistral-like) or Mllama model from its config."""
    text = text_config(config)
    try:
        hidden = int(text["hidden_size"])
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        intermediate = int(text["intermediate_size"])
        vocab = int(text["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FtcoreError(f"config.json: missing or not a number: {exc}; the memory estimate needs hidden_size, "
                          f"num_hidden_layers, num_attention_heads, intermediate_size and vocab_size") from exc
    kv_heads = int(_get(text, "num_key_value_heads", heads))
    head_dim = int(_get(text, "head_dim", hidden // heads))
    model_type = config.get("model_type", "")
    q, kv = heads * head_dim, kv_heads * head_dim
    shapes = [("q_proj", hidden, q), ("k_proj", hidden, kv), ("v_proj", hidden, kv), ("o_proj", q, hidden),
              ("gate_proj", hidden, intermediate), ("up_proj", hidden, intermediate),
              ("down_proj", intermediate, hidden)]
    per_layer = sum(i * o for _, i, o in shapes)
    linear = per_layer * layers
    qkv_bias = model_type == "qwen2" or bool(text.get("attention_bias"))
    bias = (q + 2 * kv) * (1 if qkv_bias else 0) + (hidden if text.get("attention_bias") else 0)
    if text.get("mlp_bias"):
        bias += 2 * intermediate + hidden
    other = layers * (2 * hidden + bias) + hidden  # two norms per layer, biases, the final norm
    embeddings = vocab * hidden
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    head = 0 if tied else vocab * hidden
    vision = 0
    if model_type == "mllama":
        embeddings = (vocab + 8) * hidden  # Mllama's text embeddings have 8 extra rows (the image token & co.)
        head, cross = vocab * hidden, len(text.get("cross_attention_layers") or [])
        other += cross * (2 * head_dim + 2)  # q_norm, k_norm, the two tanh gates
        vision = _mllama_vision(config.get("vision_config") or {}, hidden)
    return Counts(embeddings=embeddings, head=head, linear=linear, other=other, vision=vision, layers=layers,
                  hidden=hidden, intermediate=intermediate, kv_dim=kv, vocab=vocab,
                  largest_linear=max(i * o for _, i, o in shapes),
                  linear_shapes=tuple((name, i, o, layers) for name, i, o in shapes))


def _mllama_vision(vision: dict, text_hidden: int) -> int:
    h = int(_get(vision, "hidden_size", 1280))
    inter = int(_get(vision, "intermediate_size", 5120))
    layers, global_layers = int(_get(vision, "num_hidden_layers", 32)), int(_get(vision, "num_global_layers", 8))
    channels, patch, image = int(_get(vision, "num_channels", 3)), int(_get(vision, "patch_size", 14)), int(
        _get(vision, "image_size", 560))
    tiles = int(_get(vision, "max_num_tiles", 4))
    ratios = len(vision.get("supported_aspect_ratios") or [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1],
                                                           [4, 1]]) + 1
    patches = (image // patch) ** 2 + 1
    output_dim = int(_get(vision, "vision_output_dim", 7680))
    layer = 4 * h * h + 2 * h * inter + inter + h + 4 * h
    total = (channels * patch * patch * h + h  # patch embedding, class embedding
             + patches * h + 1 + ratios * tiles * patches * h  # gated positional + tile embeddings
             + 2 * (ratios * tiles * h + 1)  # pre/post tile positional embeddings
             + 4 * h  # layernorm pre/post
             + layers * layer + global_layers * (layer + 2))
    return total + output_dim * text_hidden + text_hidden  # the projector


# ── settings ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Settings:
    """What a run does that decides its memory."""

    method: str = "lora"  # "full", "lora" or "qlora"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    double_quant: bool = True
    lora_r: int = 8
    lora_targets: tuple | str | None = None  # "all-linear", names, or None (the model family's default)
    lora_dropout: float = 0.0
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    sequence_len: int = 2048
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    precision: str = "bf16"  # bf16, fp16, fp32 (bf16: auto means bf16 on a GPU)
    zero_stage: int = 0
    offload: bool = False  # optimizer states to CPU (ZeRO offload_optimizer, FSDP offload)
    offload_params: bool = False  # weights to CPU too
    fsdp: bool = False
    chunked_loss: bool = False
    chunked_loss_chunks: int = 8
    freeze_vision: bool = True
    device: str = "cuda"  # "cuda" (the overhead of a GPU) or "cpu"

    @classmethod
    def from_recipe(cls, recipe, device: str = "cuda") -> "Settings":
        def get(key, default=None):
            value = getattr(recipe, key, None) if not isinstance(recipe, dict) else recipe.get(key)
            return default if value is None else value

        adapter = get("adapter")
        four, eight = bool(get("load_in_4bit", False)), bool(get("load_in_8bit", False))
        method = "full" if adapter is None else "qlora" if (adapter == "qlora" or four) else "lora"
        if get("lora_target_linear", False):
            targets = "all-linear"
        else:
            given = get("lora_target_modules")
            targets = (given if isinstance(given, str) else tuple(given)) if given else None
        fp16, bf16 = bool(get("fp16", False)), get("bf16", "auto")
        if fp16:
            precision = "fp16"
        elif bf16 is True or (bf16 == "auto" and device == "cuda"):
            precision = "bf16"
        else:
            precision = "fp32"
        stage, offload, offload_params = deepspeed_stage(get("deepspeed"))
        fsdp_value = get("fsdp")
        fsdp_options = fsdp_value.split() if isinstance(fsdp_value, str) else list(fsdp_value or [])
        fsdp_config = get("fsdp_config") or {}
        sharded = bool(fsdp_value) or bool(fsdp_config)  # Axolotl's FSDP2 form: an fsdp_config mapping alone
        fsdp_offload = "offload" in fsdp_options or bool(
            fsdp_config.get("offload_params") or fsdp_config.get("fsdp_offload_params")
            or fsdp_config.get("cpu_offload"))
        return cls(method=method, load_in_4bit=four, load_in_8bit=eight,
                   double_quant=bool(get("bnb_4bit_use_double_quant", True)), lora_r=int(get("lora_r", 8)),
                   lora_targets=targets, lora_dropout=float(get("lora_dropout", 0.0)),
                   micro_batch_size=int(get("micro_batch_size", 1)),
                   gradient_accumulation_steps=int(get("gradient_accumulation_steps", 1) or 1),
                   sequence_len=int(get("sequence_len", 2048)),
                   gradient_checkpointing=bool(get("gradient_checkpointing", False)),
                   optimizer=str(get("optimizer", "adamw_torch")), precision=precision, zero_stage=stage,
                   offload=offload or (sharded and fsdp_offload),
                   offload_params=offload_params or (sharded and fsdp_offload), fsdp=sharded,
                   chunked_loss=bool(get("chunked_cross_entropy", False)),
                   chunked_loss_chunks=int(get("chunked_cross_entropy_num_chunks", 8) or 8),
                   freeze_vision=bool(get("freeze_mm_modules", True)), device=device)


def deepspeed_stage(value) -> tuple[int, bool, bool]:
    """``(ZeRO stage, optimizer offloaded, parameters offloaded)`` of a recipe's ``deepspeed`` value: a preset
    name (zero1, zero2, zero3, zero3_offload), a JSON file, or the config mapping itself."""
    if not value:
        return 0, False, False
    if isinstance(value, str) and value in PRESET_STAGES:
        stage, offload = PRESET_STAGES[value]
        return stage, offload, offload
    if isinstance(value, str):
        try:
            config = json.loads(Path(value).read_text())
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"deepspeed: '{value}' is neither a preset ({', '.join(PRESET_STAGES)}) nor a readable "
                              f"DeepSpeed JSON file ({exc})") from exc
    else:
        config = dict(value)
    zero = config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0) or 0)

    def offloaded(key):
        device = (zero.get(key) or {}).get("device", "none")
        return str(device).lower() in ("cpu", "nvme")

    return stage, offloaded("offload_optimizer"), offloaded("offload_param")


# ── the estimate ─────────────────────────────────────────────────────────────


@dataclass
class Estimate:
    weights_bytes: int
    total_bytes: int
    gpu_memory_bytes: int | None
    fits: bool | None
    headroom_bytes: int | None
    breakdown: dict
    suggestions: list = field(default_factory=list)
    parameters: int = 0
    trainable_parameters: int = 0
    gpus: int = 1
    settings: Settings | None = None
    suggestion_changes: list = field(default_factory=list)  # [(text, {setting: value}), ...]
    notes: list = field(default_factory=list)
    peak: str = "loss"  # the moment of the step the breakdown describes: loss, layers or optimizer step

    def to_json(self) -> dict:
        out = {key: getattr(self, key) for key in ("weights_bytes", "total_bytes", "gpu_memory_bytes", "fits",
                                                   "headroom_bytes", "breakdown", "suggestions", "parameters",
                                                   "trainable_parameters", "gpus", "notes", "peak")}
        out["settings"] = asdict(self.settings) if self.settings else None
        if out["settings"] and isinstance(out["settings"].get("lora_targets"), tuple):
            out["settings"]["lora_targets"] = list(out["settings"]["lora_targets"])
        return out


def lora_parameters(config: dict, settings: Settings, counts: Counts | None = None) -> int:
    counts = counts or parameter_counts(config)
    targets = settings.lora_targets
    model_type = config.get("model_type", "")
    if targets is None:
        names = DEFAULT_LORA_TARGETS.get(model_type, ["q_proj", "v_proj"])
    elif targets == "all-linear":
        names = list(ALL_LINEAR)
    elif isinstance(targets, str):  # one regex over module names
        names = [name for name in ALL_LINEAR if re.search(targets, name)]
    else:
        names = list(targets)
    return sum(settings.lora_r * (i + o) * n for name, i, o, n in counts.linear_shapes if name in names)


def _optimizer_bytes_per_param(optimizer: str, dtype_bytes: float) -> float:
    name = optimizer.lower()
    if name in EIGHT_BIT_OPTIMIZERS or "8bit" in name:
        return 2.0
    if name in STATELESS_OPTIMIZERS:
        return 0.0
    if name in ONE_STATE_OPTIMIZERS or "lion" in name:
        return dtype_bytes
    return 2 * dtype_bytes  # AdamW & co: two states in the parameter's dtype


def _activations(counts: Counts, settings: Settings, lora_names: int) -> tuple[int, int]:
    """Saved activations ``(when the loss backward runs, when the layers' backward runs)``."""
    tokens = settings.micro_batch_size * settings.sequence_len
    h, i, kv = counts.hidden, counts.intermediate, counts.kv_dim
    act = 2 if settings.precision in ("bf16", "fp16") else 4
    # one layer's saved tensors per token: residual in, norm out, q, k, v, attention out (+ its statistics),
    # the second residual and norm out, gate, up, silu(gate), their product; norms compute in fp32
    per_token = 6 * h + 2 * kv + 4 * i
    if settings.method != "full" and settings.lora_dropout > 0:
        per_token += lora_names  # dropout's copy of each adapted layer's input
    layer = tokens * per_token * act
    if settings.gradient_checkpointing:
        checkpoints = counts.layers * tokens * h * act  # a hidden state per layer
        return checkpoints, checkpoints + 2 * layer  # the layer being recomputed and its gradients
    saved = counts.layers * layer + tokens * h * act
    return saved, saved


def _optimizer_step_temporaries(counts: Counts, settings: Settings, trainable: int, train_bytes: int,
                                shard: int) -> int:
    """Buffers torch's AdamW allocates inside ``step()``, when the activations are already freed.

    On a GPU torch's default ``foreach`` implementation computes ``sqrt(v)`` for a whole parameter group at
    once (one copy of the trainable weights); on a CPU the for-loop implementation allocates two
    temporaries the size of the largest trainable tensor. The fused implementation (``adamw_torch_fused``),
    bitsandbytes' optimizers and DeepSpeed's own update in place.
    """
    if settings.optimizer != "adamw_torch" or settings.zero_stage or not trainable:
        return 0
    if settings.device == "cuda":
        return trainable * train_bytes // shard
    if settings.method == "full":
        largest = max(counts.embeddings, counts.head, counts.largest_linear)
    else:
        largest = settings.lora_r * max((max(i, o) for _, i, o, _ in counts.linear_shapes), default=0)
    return 2 * largest * train_bytes


def estimate(config: dict, settings: Settings, *, gpu_memory_bytes: int | None = None, gpus: int = 1,
             smaller_models: dict | None = None, suggest: bool = True) -> Estimate:
    """The memory per GPU of a run with ``settings`` on a model of ``config``; fits when a GPU size is given.

    ``smaller_models`` (``{model_id: config}``) are tried as a suggestion when it does not fit.
    """
    counts = parameter_counts(config)
    gpus = max(1, int(gpus))
    model_type = config.get("model_type", "")
    base_bytes = BYTES[settings.precision]
    if settings.method == "full" and settings.precision == "fp16":
        base_bytes = 4  # fp16 mixed precision keeps trainable weights in fp32
    half = 2 if settings.precision in ("bf16", "fp16") else 4  # the "16-bit" parts (fp32 on CPU)
    quantized = settings.method != "full" and (settings.load_in_4bit or settings.load_in_8bit
                                               or settings.method == "qlora")
    if quantized and settings.load_in_8bit and not settings.load_in_4bit:
        linear_bytes = counts.linear * 1 + counts.layers * 4 * sum(o for _, _, o, _ in counts.linear_shapes)
    elif quantized:
        per = BYTES["nf4"] + (NF4_CONSTANTS_DOUBLE if settings.double_quant else NF4_CONSTANTS)
        linear_bytes = counts.linear * per
    else:
        linear_bytes = counts.linear * base_bytes
    rest = counts.embeddings + counts.head + counts.vision
    weights = linear_bytes + rest * (half if quantized else base_bytes) + counts.other * (4 if quantized else base_bytes)

    adapter_params = lora_parameters(config, settings, counts) if settings.method != "full" else 0
    if settings.method == "full":
        trainable = counts.total - (counts.vision if settings.freeze_vision else 0)
        train_bytes = base_bytes
    else:
        trainable, train_bytes = adapter_params, 4  # peft's adapter weights are fp32
    adapter = adapter_params * 4
    gradients = trainable * train_bytes
    optimizer = trainable * _optimizer_bytes_per_param(settings.optimizer, train_bytes)
    if settings.zero_stage and train_bytes < 4:
        optimizer += trainable * 4  # ZeRO's fp32 master copy of 16-bit trainable weights

    # sharding: ZeRO-1 optimizer states, ZeRO-2 + gradients, ZeRO-3 and FSDP + weights
    shard = gpus if (settings.zero_stage or settings.fsdp) else 1
    if settings.zero_stage >= 1 or settings.fsdp:
        optimizer /= shard
    if settings.zero_stage >= 2 or settings.fsdp:
        gradients /= shard
    sharded_weights = settings.zero_stage >= 3 or settings.fsdp
    if sharded_weights:
        weights /= shard
        adapter /= shard
    if settings.offload:
        optimizer = 0
    if settings.offload_params and sharded_weights:
        weights = 0  # on CPU; one layer at a time is gathered (counted in the overhead)

    names = _lora_input_size(counts, settings, config)
    at_loss, at_layers = _activations(counts, settings, names)
    positions = settings.micro_batch_size * settings.sequence_len
    logits = positions * counts.vocab * LOGIT_BYTES
    if settings.chunked_loss:
        logits /= max(1, settings.chunked_loss_chunks)
    # a trained output head whose gradient arrives in pieces (a chunk at a time, or tied to the embeddings)
    # adds each piece to .grad through one more head-sized buffer
    head_piece = 0
    if settings.method == "full" and (settings.chunked_loss or not counts.head):
        head_piece = counts.vocab * counts.hidden * train_bytes
    step = _optimizer_step_temporaries(counts, settings, trainable, train_bytes, shard)
    overhead = CUDA_OVERHEAD if settings.device == "cuda" else CPU_OVERHEAD
    if quantized:
        overhead += 2 * counts.largest_linear * half  # a dequantized weight and its transpose's product
    if sharded_weights and shard > 1:
        overhead += 2 * (counts.linear // max(1, counts.layers)) * half  # a gathered layer (and the next, prefetched)

    # the peak is the largest of three moments: the loss's backward (saved activations, the loss buffers),
    # the layers' backward (a recomputed layer), the optimizer step (activations freed, its temporaries)
    moments = {"loss": at_loss + logits + head_piece, "layers": at_layers, "optimizer step": step}
    peak = max(moments, key=moments.get)
    breakdown = {"weights": int(weights), "adapter": int(adapter),
                 "gradients": int(gradients + (head_piece if peak == "loss" else 0)),
                 "optimizer_states": int(optimizer),
                 "activations": int({"loss": at_loss, "layers": at_layers}.get(peak, 0)),
                 "logits": int(logits if peak == "loss" else 0),
                 "optimizer_step": int(step if peak == "optimizer step" else 0),
                 "overhead": int(overhead)}
    total = sum(breakdown.values())
    fits = headroom = None
    if gpu_memory_bytes:
        headroom = int(gpu_memory_bytes) - total
        fits = headroom >= 0
    result = Estimate(weights_bytes=int(weights), total_bytes=int(total), gpu_memory_bytes=gpu_memory_bytes,
                      fits=fits, headroom_bytes=headroom, breakdown=breakdown, parameters=counts.total,
                      trainable_parameters=int(trainable), gpus=gpus, settings=settings, peak=peak)
    if peak == "optimizer step":
        result.notes.append(f"the peak is the optimizer step: torch AdamW's temporaries ({gib(step)}) outgrow the "
                            f"activations and logits ({gib(max(moments['loss'], moments['layers']))}), which are freed by "
                            f"then" + ("; optimizer: adamw_torch_fused updates in place" if settings.device == "cuda"
                                       else ""))
    if "paged" in settings.optimizer and optimizer:
        result.notes.append(f"{settings.optimizer}: the optimizer states ({gib(optimizer)}) are paged and may move "
                            f"to CPU memory when the GPU runs short")
    if settings.offload:
        result.notes.append("optimizer states offloaded to CPU memory: not counted on the GPU")
    if suggest and fits is False:
        result.suggestion_changes = _suggestions(config, settings, gpu_memory_bytes, gpus, model_type,
                                                 smaller_models or {})
        result.suggestions = [text for text, _ in result.suggestion_changes]
    return result


def _lora_input_size(counts: Counts, settings: Settings, config: dict) -> int:
    """Elements per token that LoRA dropout copies: the input of every adapted linear layer."""
    if settings.method == "full" or settings.lora_dropout <= 0:
        return 0
    probe = replace(settings, lora_r=1)
    names = {name for name, i, o, n in counts.linear_shapes
             if lora_parameters(config, probe, Counts(0, 0, 0, 0, linear_shapes=((name, i, o, 1),)))}
    return sum(i for name, i, _, _ in counts.linear_shapes if name in names)


def _suggestions(config, settings, gpu_memory_bytes, gpus, model_type, smaller_models) -> list:
    """Changes that would make the run fit, each checked by estimating again with it applied."""
    found = []

    def check(text, gpus_=gpus, config_=config, extra=None, **changes):
        trial = replace(settings, **changes)
        result = estimate(config_, trial, gpu_memory_bytes=gpu_memory_bytes, gpus=gpus_, suggest=False)
        if result.fits:
            found.append((f"{text} (estimated {gib(result.total_bytes)} per GPU)",
                          {**changes, **({"gpus": gpus_} if gpus_ != gpus else {}), **(extra or {})}))
            return True
        return False

    if settings.optimizer == "adamw_torch" and settings.device == "cuda":  # checked: helps only with temporaries
        check("optimizer: adamw_torch_fused (the same AdamW, updated in place: no step temporaries)",
              optimizer="adamw_torch_fused")
    if settings.method == "lora" and not settings.load_in_4bit:
        check("QLoRA instead of LoRA: adapter: qlora, load_in_4bit: true", method="qlora", load_in_4bit=True,
              load_in_8bit=False)
    if settings.method == "full":
        check("QLoRA instead of full fine-tuning: adapter: qlora, load_in_4bit: true, lora_target_linear: true",
              method="qlora", load_in_4bit=True, lora_targets="all-linear", lora_r=16)
    tokens_per_step = settings.micro_batch_size * settings.gradient_accumulation_steps
    micro = settings.micro_batch_size // 2
    while micro >= 1:
        if tokens_per_step % micro == 0 and check(
                f"micro_batch_size: {micro} with gradient_accumulation_steps: {tokens_per_step // micro} (the same "
                f"{tokens_per_step} sequences per step)", micro_batch_size=micro,
                gradient_accumulation_steps=tokens_per_step // micro):
            break
        micro //= 2
    if not settings.gradient_checkpointing:
        check("gradient_checkpointing: true", gradient_checkpointing=True)
    if (not settings.chunked_loss and model_type in CHUNKED_LOSS_TYPES and settings.zero_stage < 3
            and not settings.fsdp):
        check("chunked_cross_entropy: true", chunked_loss=True)
    if settings.zero_stage < 3 and not settings.fsdp:
        for n in (2, 4, 8):
            if n > gpus and check(f"DeepSpeed ZeRO-3 over {n} GPUs: deepspeed: zero3, ftcore run --nproc {n}",
                                  gpus_=n, zero_stage=3, chunked_loss=False):
                break
    for model_id, other in sorted(smaller_models.items(), key=lambda kv: -parameter_counts(kv[1]).total):
        if parameter_counts(other).total < parameter_counts(config).total and check(
                f"a smaller model of the family: base_model: {model_id}", config_=other,
                extra={"base_model": model_id}):
            break
    if not found:  # no one change is enough: the same changes together, as few as make it fit
        steps, changes = [], {}
        if settings.method != "qlora":
            steps.append(("adapter: qlora with load_in_4bit: true", {"method": "qlora", "load_in_4bit": True,
                                                                     "load_in_8bit": False}))
        if settings.micro_batch_size > 1:
            steps.append((f"micro_batch_size: 1 with gradient_accumulation_steps: {tokens_per_step}",
                          {"micro_batch_size": 1, "gradient_accumulation_steps": tokens_per_step}))
        if not settings.gradient_checkpointing:
            steps.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
        if (not settings.chunked_loss and model_type in CHUNKED_LOSS_TYPES and settings.zero_stage < 3
                and not settings.fsdp):
            steps.append(("chunked_cross_entropy: true", {"chunked_loss": True}))
        texts = []
        for text, change in steps:
            texts.append(text)
            changes.update(change)
            if len(texts) > 1 and check("together: " + ", ".join(texts), **changes):
                break
    return found
