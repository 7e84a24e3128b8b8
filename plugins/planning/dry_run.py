"""``ftcore run RECIPE --dry-run``: rehearse a run on the CPU in under a minute, then say what the real one does.

The core's ``--dry-run`` flag calls the ``dry_run`` hook (``core/hookspecs.py``) with a temporary folder and
``train(overrides)``, the real pipeline on the recipe plus overrides. This plugin answers it:

1. the base model's architecture (``ftcore.api.model_facts``, or a ``config.json`` in a local folder or the
   Hugging Face cache) is shrunk to a tiny random model of the same class (:func:`shrink`): 2 layers,
   hidden 64, the heads' grouping, rope settings, tied embeddings and biases kept; every linear layer's
   output a multiple of 32, so QLoRA's 4-bit path runs through bitsandbytes on the CPU;
2. the tokenizer: the real one when it is local (a folder, the Hugging Face cache), else a tiny one with
   the family's special tokens and chat template (``ftcore.testing.tiny``);
3. the data: the first rows of each local file or cached Hub dataset, else made-up rows in the entry's
   declared format (:func:`made_up_rows`), said plainly;
4. ``train(overrides)``: a few optimizer steps with CPU-safe settings (each change printed), the result
   saved and loaded back (``ftcore.api.load_trained``);
5. the real run's plan: examples and tokens, optimizer steps, tokens per step, memory per GPU
   (``memory.estimate``) and a time estimate with its assumption.

Nothing here is imported before ``--dry-run`` is given; torch loads inside the hook.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ftcore.api import FtcoreError, hookimpl, model_facts

SAMPLE_ROWS = 32  # rows of each dataset entry the dry run trains on
MADE_UP_ROWS = 16
STEPS = 2
SEQUENCE_LEN = 512  # the dry run's longest sequence (the real one is printed)
CPU_OPTIMIZERS = {"adamw_torch", "adamw_hf", "sgd", "adafactor", "adagrad", "rmsprop"}
# time estimate: training FLOPs per token are 6 x parameters (full), 4 x (an adapter: no base weight gradients)
GPU_FLOPS, UTILISATION, GPU_NAME = 312e12, 0.4, "an A100 (312 bf16 TFLOPS)"
CHARS_PER_TOKEN = 4.0  # Llama 3's and Qwen2.5's tokenizers on English text and code, roughly

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, head_dim=32)  # hidden: at least heads x 32
VISION = dict(hidden_size=32, attention_heads=2, num_hidden_layers=2, num_global_layers=1, intermediate_size=64,
              intermediate_layers_indices=[0], vision_output_dim=64, image_size=28, patch_size=14)
# keys whose value depends on the number of layers (recomputed from the shrunk one)
PER_LAYER = ("layer_types", "max_window_layers", "cross_attention_layers", "num_kv_shared_layers")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_index", "image_token_id")


@hookimpl(trylast=True, specname="dry_run")
def rehearse_run(recipe, workdir, train, plugins):
    """The ``dry_run`` hook: rehearse the recipe in ``workdir`` and print the real run's plan."""
    return rehearse(recipe, Path(workdir), train, plugins)


# ── the architecture, shrunk ────────────────────────────────────────────────


def architecture(base_model: str, plugins) -> tuple[dict, str]:
    """``(config.json content, where it came from)`` for ``base_model``, as ``ftcore estimate`` reads it (the
    registered facts, a local folder, the Hugging Face cache, the Hub); FtcoreError when nothing knows it."""
    from .memory import architecture as known

    return known(base_model, plugins)


def _cached_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # not a repo id
        return None
    return found if isinstance(found, str) else None


def is_vision(config: dict) -> bool:
    return "vision_config" in config


def shrink(config: dict, vocab_size: int) -> dict:
    """The same architecture, tiny: 2 layers, hidden 64, intermediate 128, heads and kv heads in the real
    ratio (head_dim 32, so every projection's output is a multiple of 32); everything else as it is."""
    if is_vision(config):
        out = {k: v for k, v in config.items() if k not in TOKEN_IDS}
        text = _shrink_text(dict(config.get("text_config") or {}), vocab_size)
        if "cross_attention_layers" in (config.get("text_config") or {}):
            text["cross_attention_layers"] = [text["num_hidden_layers"] - 1]  # the last layer looks at images
        out["text_config"] = text
        vision = dict(config.get("vision_config") or {})
        for key in ("supported_aspect_ratios", "intermediate_layers_indices"):
            vision.pop(key, None)  # derived from the tiles and layers
        vision.update(VISION)
        out["vision_config"] = vision
        return out
    return _shrink_text(config, vocab_size)


def _shrink_text(config: dict, vocab_size: int) -> dict:
    heads = int(config.get("num_attention_heads") or 4)
    kv = int(config.get("num_key_value_heads") or heads)
    ratio = max(1, heads // kv) if heads % kv == 0 else 1
    heads, kv = (ratio, 1) if ratio > 1 else (2, 2)
    out = {k: v for k, v in config.items() if k not in PER_LAYER + TOKEN_IDS}
    # hidden = heads x head_dim: some architectures (Mllama's text model) derive the rotary size from hidden / heads
    out.update(TINY, num_attention_heads=heads, num_key_value_heads=kv, vocab_size=-(-vocab_size // 32) * 32,
               hidden_size=max(TINY["hidden_size"], heads * TINY["head_dim"]))
    if "max_window_layers" in config:
        out["max_window_layers"] = out["num_hidden_layers"]
    return out


def build_config(shrunk: dict):
    """A transformers config object from a (shrunk) ``config.json`` mapping, read as transformers reads one."""
    from transformers import AutoConfig

    model_type = shrunk.get("model_type")
    if not model_type:
        raise FtcoreError("base_model: its config.json names no model_type; the dry run cannot build the model")
    return type(AutoConfig.for_model(model_type)).from_dict(shrunk)


def build_model(config):
    """A random model of the config's ``architectures[0]`` class (the class the real model loads as)."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(config)
    return cls(config)


# ── the tokenizer ───────────────────────────────────────────────────────────


def family_of(config: dict) -> str:
    """Which tiny tokenizer carries this model's special tokens: ``llama3`` or ``qwen2``."""
    kind = str(config.get("model_type") or (config.get("text_config") or {}).get("model_type") or "")
    return "qwen2" if kind.startswith("qwen") else "llama3"


def real_tokenizer(recipe):
    """The real tokenizer when it loads without the network (a local folder, the Hugging Face cache), else None."""
    source = recipe.tokenizer_config or recipe.base_model
    local = Path(source).expanduser()
    if not (local.is_dir() or _cached_file(source, "tokenizer_config.json")):
        return None, source
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, local_files_only=True,
                                             trust_remote_code=recipe.trust_remote_code), source
    except Exception:
        return None, source


# ── the data ────────────────────────────────────────────────────────────────


QUESTIONS = [("What colour is the sky?", "Blue."), ("Name the capital of France.", "Paris."),
             ("Sort the numbers 3 1 2.", "1 2 3"), ("Write a function that adds two numbers.",
                                                   "def add(a, b):\n    return a + b\n"),
             ("Reverse the words: red green blue.", "blue green red"), ("What does a cow say?", "Moo.")]


def made_up_rows(spec, n: int = MADE_UP_ROWS, images: bool = False) -> list[dict]:
    """``n`` rows in ``spec``'s declared format (its ``type`` and field options), for when the real rows are
    not here. ``images``: conversations carry an image part (``{"type": "image", "path": "image.png"}``)."""
    options = spec.options
    kind = spec.type or "alpaca"
    rows = []
    for i in range(n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        if kind == "alpaca":
            rows.append({options.field_instruction: question, options.field_input: "", options.field_output: answer})
        elif kind in ("chat_template", "sharegpt") or hasattr(options, "field_messages"):
            mappings = getattr(options, "message_property_mappings", None) or {}
            role = mappings.get("role") or getattr(options, "message_field_role", None) or \
                getattr(type(options), "default_role_key", "role")
            content = mappings.get("content") or getattr(options, "message_field_content", None) or \
                getattr(type(options), "default_content_key", "content")
            user, assistant = ("human", "gpt") if kind == "sharegpt" else ("user", "assistant")
            asked = [{"type": "image", "path": "image.png"}, {"type": "text", "text": question}] if images \
                else question
            rows.append({options.field_messages: [{role: user, content: asked}, {role: assistant, content: answer}]})
        elif kind in ("completion", "pretrain") or hasattr(options, "field"):
            rows.append({getattr(options, "field", "text"): f"{question} {answer}"})
        elif kind == "input_output":
            rows.append({options.field_segments: [{"text": question + "\n", "label": False},
                                                  {"text": answer, "label": True}]})
        else:
            raise FtcoreError(f"datasets: type '{kind}' ({spec.path}): the real data is not here and the dry run "
                              f"cannot make up rows of this format; point it at a few local rows, e.g. "
                              f"'datasets[0].path=sample.jsonl'")
    return rows


def _local_jsonl(path: Path) -> bool:
    return path.is_file() and path.suffix in (".jsonl", ".json")


def _absolute_paths(value, folder: Path):
    """Relative file paths inside a row (image parts) made absolute: the sample lives in another folder."""
    if isinstance(value, dict):
        return {k: (str(folder / v) if k in ("path", "image") and isinstance(v, str) and not Path(v).is_absolute()
                    and (folder / v).exists() else _absolute_paths(v, folder)) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute_paths(v, folder) for v in value]
    return value


def _read_sample(path: Path, n: int) -> tuple[list[dict], int | None]:
    """The first ``n`` rows of a local JSON lines or JSON file, and how many rows it holds."""
    text_rows = []
    if path.suffix == ".jsonl":
        total = 0
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    total += 1
                    if len(text_rows) < n:
                        text_rows.append(json.loads(line))
        return [_absolute_paths(r, path.parent) for r in text_rows], total
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data if isinstance(data, list) else data.get("data") or []
    return [_absolute_paths(r, path.parent) for r in rows[:n]], len(rows)


def _hub_sample(spec, n: int):
    """The first ``n`` rows of a Hub dataset already in the cache (offline) and its size, or None."""
    try:
        import datasets

        table = datasets.load_dataset(spec.path, spec.name, split=spec.split or "train", revision=spec.revision,
                                      data_files=spec.data_files)
        rows = [table[i] for i in range(min(n, len(table)))]
        json.dumps(rows)  # images as PIL objects do not travel through a JSON lines file: made-up rows then
        return rows, len(table)
    except Exception:
        return None


def sample_data(recipe, work: Path, images: bool) -> tuple[list[str], list[dict]]:
    """Overrides pointing each dataset entry at a sample in ``work``, and one note per entry."""
    overrides, notes = [], []
    for index, spec in enumerate(recipe.datasets or []):
        key = f"datasets[{index}]"
        local = Path(spec.path).expanduser()
        rows, total, how = None, None, ""
        if _local_jsonl(local):
            rows, total = _read_sample(local, SAMPLE_ROWS)
            how = "local file"
        elif local.exists():
            notes.append({"path": spec.path, "source": "local", "rows": None, "real": True,
                          "how": "local data (read whole: not a JSON lines file)"})
            continue
        else:
            found = _hub_sample(spec, SAMPLE_ROWS) if _hub_cached(spec.path) else None
            if found:
                rows, total = found
                how = "Hugging Face cache"
        real = rows is not None
        if not real:
            rows = made_up_rows(spec, images=images)
            how = "made up"
        folder = work / "data" / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        if images and not real:
            _write_image(folder / "image.png")
        target = folder / "sample.jsonl"
        target.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
        overrides += [f"{key}.path={target}", f"{key}.split=null", f"{key}.data_files=null", f"{key}.name=null",
                      f"{key}.revision=null", f"{key}.ds_type=jsonl", f"{key}.shards=null"]
        notes.append({"path": spec.path, "source": how, "rows": total, "real": real, "sample": len(rows),
                      "sample_chars": sum(_text_chars(r) for r in rows), "sample_file": str(target)})
    if recipe.test_datasets:
        overrides.append("test_datasets=null")
    return overrides, notes


def _text_chars(value) -> int:
    """Characters of a row's text (its string values), the basis of a token estimate without the real tokenizer."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    folder = Path(HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def _write_image(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(path)


# ── the rehearsal ───────────────────────────────────────────────────────────


def cpu_settings(recipe, has_eval: bool) -> tuple[list[str], list[str]]:
    """Overrides that let the recipe run a few steps on this CPU, and a line for each change that matters."""
    overrides = [f"max_steps={STEPS}", "logging_steps=1", "dataset_processes=1", "resume_from_checkpoint=null",
                 "dataset_prepared_path=null", "saves_per_epoch=null",
                 f"save_steps={STEPS}", "save_total_limit=1", "eval_steps=null", "evals_per_epoch=null",
                 "eval_on_start=false", f"gradient_accumulation_steps={min(2, recipe.gradient_accumulation_steps)}",
                 f"micro_batch_size={min(2, recipe.micro_batch_size)}", "batch_size=null"]
    changed = [f"{STEPS} optimizer steps of micro batch {min(2, recipe.micro_batch_size)} x "
               f"{min(2, recipe.gradient_accumulation_steps)} accumulation (the real run: see the plan)"]
    if recipe.optimizer not in CPU_OPTIMIZERS:
        overrides.append("optimizer=adamw_torch")
        changed.append(f"optimizer: {recipe.optimizer} -> adamw_torch (paged, 8-bit and fused optimizers need a GPU)")
    if recipe.get("bf16") or recipe.get("fp16"):
        changed.append(f"precision: fp32 on the CPU (the recipe: bf16 {recipe.get('bf16')!r}, fp16 {recipe.get('fp16')!r})")
    overrides += ["bf16=false", "fp16=false", "tf32=false"]
    if recipe.sequence_len > SEQUENCE_LEN:
        overrides.append(f"sequence_len={SEQUENCE_LEN}")
        changed.append(f"sequence_len: {recipe.sequence_len} -> {SEQUENCE_LEN}")
    for key in ("deepspeed", "fsdp", "fsdp_config"):
        if recipe.is_set(key) and recipe.get(key):
            overrides.append(f"{key}=null")
            changed.append(f"{key}: not used (one process on the CPU)")
    for key in ("hub_model_id", "wandb_project", "use_wandb", "use_mlflow", "push_to_hub"):
        if recipe.is_set(key) and recipe.get(key):
            overrides.append(f"{key}=null")
            changed.append(f"{key}: off (nothing leaves this machine)")
    if recipe.is_set("early_stopping_patience") and recipe.get("early_stopping_patience"):
        overrides.append("early_stopping_patience=null")  # the dry run evaluates once, at its end
        changed.append("early_stopping_patience: off (a few steps with one evaluation at the end)")
    if has_eval:
        overrides.append("val_set_size=4")
        chosen = list(recipe.evaluators or [])
        if chosen and chosen != ["loss"]:
            overrides.append("evaluators=[loss]")
            changed.append(f"evaluators: {', '.join(chosen)} -> loss (generating from a random model says nothing)")
    return overrides, changed


def tiny_model(recipe, config: dict, work: Path) -> tuple[Path, str]:
    """The tiny model (and its tokenizer or processor) saved in ``work/model``; says which tokenizer."""
    import torch

    from ftcore.testing.tiny import build_mllama, train_tokenizer

    target = work / "model"
    torch.manual_seed(recipe.seed)
    if is_vision(config):
        build_mllama(target)  # the processor: Llama 3's tokens with <|image|>, 28-pixel tiles
        from transformers import AutoProcessor

        tokenizer = AutoProcessor.from_pretrained(target).tokenizer
        said = "a tiny tokenizer with Llama 3.2 Vision's special tokens and chat template (the real one is not here)"
    else:
        tokenizer, source = real_tokenizer(recipe)
        if tokenizer is not None:
            said = f"the real tokenizer ({source})"
        else:
            tokenizer = train_tokenizer(family_of(config))
            said = (f"a tiny tokenizer with {'Qwen2.5' if family_of(config) == 'qwen2' else 'Llama 3'}'s special "
                    f"tokens and chat template (the real one is not here)")
    shrunk = shrink(config, len(tokenizer))
    pad = tokenizer.pad_token_id
    if pad is None and "<|finetune_right_pad_id|>" in tokenizer.get_vocab():  # Llama 3's padding token
        pad = tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    # the tokenizer's ids (a config class's defaults are the real vocabulary's)
    (shrunk.get("text_config") or shrunk).update(bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    if is_vision(config):
        shrunk["image_token_index"] = tokenizer.convert_tokens_to_ids("<|image|>")
    model_config = build_config(shrunk)
    model = build_model(model_config)
    model.save_pretrained(target)
    if not is_vision(config):
        tokenizer.save_pretrained(target)
    return target, said


def _sizes(shrunk: dict) -> str:
    text = shrunk.get("text_config") or shrunk
    return (f"{text['num_hidden_layers']} layers, hidden {text['hidden_size']}, {text['num_attention_heads']} heads / "
            f"{text['num_key_value_heads']} kv heads")


def rehearse(recipe, workdir: Path, train, plugins) -> int:
    started = time.monotonic()
    config, where = architecture(recipe.base_model, plugins)
    has_eval = bool(recipe.val_set_size)
    model_dir, tokenizer_said = tiny_model(recipe, config, workdir)
    counted_tokens = tokenizer_said.startswith("the real tokenizer")
    data_overrides, data_notes = sample_data(recipe, workdir, images=is_vision(config))
    settings, changed = cpu_settings(recipe, has_eval)
    overrides = [f"base_model={model_dir}", "tokenizer_config=null", "base_model_config=null", *data_overrides,
                 *settings]
    kind = (config.get("architectures") or [config.get("model_type")])[0]
    print(f"dry run: {recipe.base_model} -> a tiny random {kind} (architecture from {where}; "
          f"{_sizes(shrink(config, 512))})")
    print(f"dry run: tokenizer: {tokenizer_said}")
    for note in data_notes:
        if note["real"]:
            print(f"dry run: data: {note['path']}: the first {note.get('sample', 'all')} rows ({note['source']})")
        else:
            print(f"dry run: data: {note['path']}: not here: {note['sample']} made-up rows in its format "
                  f"({recipe_type(recipe, note['path'])}); the real data's rows were not checked")
    for line in changed:
        print(f"dry run: changed: {line}")
    try:
        result = train(overrides)
    except FtcoreError as exc:
        raise _named_for_the_user(exc, data_notes) from None
    reloaded = _reload(result.output_dir, plugins)
    took = time.monotonic() - started
    stats = _run_stats(result.output_dir)
    print(f"dry run: passed in {took:.0f} s: {STEPS} optimizer steps through the real pipeline, "
          f"the result saved and loaded back ({reloaded})")
    for line in plan(recipe, config, data_notes, stats if counted_tokens else {}, plugins):
        print(line)
    return 0


def _named_for_the_user(exc: FtcoreError, notes: list[dict]) -> FtcoreError:
    """``exc`` with each sample file's path replaced by the data the user named (a row number is the same:
    the sample is the file's first rows, in order)."""
    text = str(exc)
    for note in notes:
        if note.get("sample_file"):
            where = note["path"] if note["source"] == "local file" else f"{note['path']} ({note['source']} sample)"
            text = text.replace(note["sample_file"], where)
    exc.args = (text,)
    return exc


def recipe_type(recipe, path):
    return next((spec.type for spec in recipe.datasets or [] if spec.path == path), None) or "alpaca"


def _reload(run_dir: Path, plugins) -> str:
    from ftcore.api import load_trained

    trained = load_trained(run_dir, plugins)
    return type(trained.model).__name__


def _run_stats(run_dir: Path) -> dict:
    """What the dry run's data came to: examples and tokens (from its run.json)."""
    try:
        manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest.get("data") or {}


# ── the plan of the real run ────────────────────────────────────────────────


def plan(recipe, config: dict, notes: list[dict], stats: dict, plugins) -> list[str]:
    """What the real run would do, in lines: data, tokens per step, optimizer steps, memory, time.

    The data's size is counted when every entry's rows are here (a local JSON lines file, a cached Hub
    dataset); tokens come from the real tokenizer on the sample, or from characters when it is not here.
    Made-up rows say nothing about the real data: the steps and time are then given per 10,000 examples
    (or per 100 M tokens when packed)."""
    lines = ["", f"the real run ({recipe.base_model}, {recipe.adapter or 'full fine-tuning'}, "
                 f"{recipe.num_epochs:g} epoch(s)):"]
    known = bool(notes) and all(n["real"] and isinstance(n.get("rows"), int) for n in notes)
    tokens_per_example, tokens_how = _tokens_per_example(stats, notes)
    micro, accumulation, processes = recipe.micro_batch_size, recipe.gradient_accumulation_steps, 1
    if recipe.batch_size:
        accumulation = max(1, recipe.batch_size // (micro * processes))
    examples_per_step = micro * accumulation * processes
    if recipe.sample_packing:
        per_step = examples_per_step * recipe.sequence_len
        lines.append(f"  tokens per step: {per_step:,} at most ({micro} x {accumulation} packed bins of "
                     f"{recipe.sequence_len:,} tokens, 1 GPU)")
    else:
        per_step = examples_per_step * (tokens_per_example or 0) if known else None
        lines.append(f"  tokens per step: {examples_per_step} examples ({micro} x {accumulation}, 1 GPU)"
                     + (f", about {per_step:,.0f} tokens" if per_step else ""))
    steps = None
    if known:
        rows = sum(n["rows"] for n in notes)
        held = recipe.val_set_size if recipe.val_set_size >= 1 else math.ceil(rows * recipe.val_set_size)
        train_examples = max(0, rows - int(held))
        tokens = train_examples * tokens_per_example if tokens_per_example else None
        partial = not all(n["sample"] >= n["rows"] for n in notes)
        lines.append(f"  data: {train_examples:,} training examples (counted)"
                     + (f", about {tokens:,.0f} tokens ({tokens_how}"
                        + (f", from the first {sum(n['sample'] for n in notes)} rows)" if partial else ")")
                        if tokens else ""))
        if recipe.max_steps:
            steps = recipe.max_steps
            lines.append(f"  optimizer steps: {steps:,} (max_steps)")
        elif recipe.sample_packing and tokens:
            steps = max(1, math.ceil(math.ceil(tokens / per_step) * recipe.num_epochs))
            lines.append(f"  optimizer steps: about {steps:,} (bins filled to sequence_len)")
        else:
            steps = max(1, math.ceil(math.ceil(train_examples / examples_per_step) * recipe.num_epochs))
            lines.append(f"  optimizer steps: {steps:,}")
    else:
        lines.append("  data: size unknown: the real data's rows were not checked (not here, offline)")
        if recipe.max_steps:
            steps = recipe.max_steps
            lines.append(f"  optimizer steps: {steps:,} (max_steps)")
        elif recipe.sample_packing:
            lines.append(f"  optimizer steps: about {math.ceil(100e6 / per_step * recipe.num_epochs):,} per 100 M "
                         f"training tokens (bins filled to sequence_len)")
        else:
            lines.append(f"  optimizer steps: {math.ceil(10_000 / examples_per_step * recipe.num_epochs):,} per "
                         f"10,000 training examples")
    lines += _memory(recipe, config)
    parameters = _parameters(recipe, config, plugins)
    if steps and per_step:
        lines += _time(recipe, parameters, steps * per_step, "")
    elif recipe.sample_packing:
        lines += _time(recipe, parameters, 100e6 * recipe.num_epochs, " per 100 M training tokens")
    return lines


def _tokens_per_example(stats: dict, notes: list[dict]) -> tuple[float | None, str]:
    """Tokens per example of the real run: counted by the real tokenizer on the sample (``stats``: the dry
    run's ``run.json`` data), else from the sample's characters (about 4 per token); and which."""
    train = stats.get("train") or {}
    if train.get("rows_kept") and train.get("tokens"):
        return train["tokens"] / train["rows_kept"], "tokens counted by the real tokenizer on the sample"
    chars = sum(n.get("sample_chars") or 0 for n in notes)
    rows = sum(n.get("sample") or 0 for n in notes)
    return (chars / CHARS_PER_TOKEN / rows if rows else None), \
        f"tokens estimated at {CHARS_PER_TOKEN:g} characters each (the real tokenizer is not here)"


def _memory(recipe, config) -> list[str]:
    from .memory import Settings, estimate

    try:
        found = estimate(config, Settings.from_recipe(recipe))
    except Exception as exc:  # the estimate's own problem: the dry run passed
        return [f"  memory per GPU: not estimated ({exc})"]
    return [f"  memory per GPU: about {found.total_bytes / 2**30:.1f} GiB "
            f"(weights {found.weights_bytes / 2**30:.1f} GiB; `ftcore estimate` for the breakdown)"]


def _parameters(recipe, config, plugins) -> int | None:
    from .memory import parameter_counts

    facts = model_facts(plugins, recipe.base_model)
    if facts is not None and facts.parameters:
        return int(facts.parameters)
    try:
        return int(parameter_counts(config).total)
    except Exception:  # an architecture the arithmetic does not know: no time estimate
        return None


def _time(recipe, parameters, tokens, per: str) -> list[str]:
    """Hours of training for ``tokens`` trained tokens, with the assumption said."""
    if not parameters or not tokens:
        return []
    factor = 6 if not recipe.adapter else 4
    seconds = factor * parameters * tokens / (GPU_FLOPS * UTILISATION)
    hours = seconds / 3600
    shown = f"{hours:,.1f} hours" if hours >= 1 else f"{seconds / 60:,.1f} minutes" if seconds >= 60 else \
        f"{seconds:,.1f} seconds"
    size = f"{parameters / 1e9:.1f} B" if parameters >= 1e9 else f"{parameters / 1e6:.1f} M"
    return [f"  time: about {shown}{per} on one GPU, assuming {factor} x {size} parameters x tokens FLOPs "
            f"({'full fine-tuning' if factor == 6 else 'an adapter: no gradients of the base weights'}) "
            f"at {UTILISATION:.0%} of {GPU_NAME}"]
