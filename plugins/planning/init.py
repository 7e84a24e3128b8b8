"""``ftcore init --task chat|code|vision --gpu-memory 24GiB``: a starter recipe that fits the GPU.

    ftcore init --task chat --gpu-memory 24GiB --data chats.jsonl --out recipe.yaml
    ftcore run recipe.yaml

The models are the registered ones (``register_models``, ``ftcore.api.registered_models``) of the task,
largest first (chat: Llama 3.1 405B, 70B, 8B, then Llama 3.2 3B and 1B; code: Qwen2.5 Coder 32B down to
0.5B; vision: Llama 3.2 90B and 11B Vision). For each, the methods are tried in the order full
fine-tuning, LoRA, QLoRA, each judged by the memory arithmetic of ``memory.py`` (``estimate``) for the
settings the recipe would hold; the first that fits is written. On several GPUs (``--gpus N``) each method
is tried under DeepSpeed ZeRO-2 (only optimizer states and gradients sharded) and then ZeRO-3 (the weights
too). With ``--data FILE`` the dataset entry is detected from the file's first rows.

Nothing here imports torch or transformers: the facts, the arithmetic and the data sniffing need none.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ftcore.api import DataError, FtcoreError, registered_models

HELP = "write a starter recipe: the largest model and method (full, LoRA, QLoRA) whose memory estimate fits the GPU"

TASKS = ("chat", "code", "vision")
METHODS = ("full", "lora", "qlora")
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
GiB = 1024 ** 3
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SOURCE_SUFFIXES = (".py", ".js", ".ts", ".java", ".c", ".h", ".cc", ".cpp", ".hpp", ".go", ".rs", ".rb", ".php",
                   ".cs", ".kt", ".swift", ".scala", ".sh", ".lua", ".sql", ".r", ".jl", ".m", ".md")
SAMPLE_ROWS = 20
FORMATS_KNOWN = ("chat_template (a 'messages' list of {role, content}), sharegpt (a 'conversations' list of "
                 "{from, value}), alpaca (instruction and output, optionally input), input_output (a 'segments' "
                 "list of {text, label}), completion (text)")
ALPACA_PAIRS = (("instruction", "output"), ("instruction", "response"), ("prompt", "completion"),
                ("prompt", "response"), ("question", "answer"), ("query", "response"), ("input", "output"))

# The placeholder data of each task: the data sets the shipped recipes train on (replace with yours).
PLACEHOLDER = {
    "chat": {"path": "HuggingFaceH4/ultrachat_200k", "split": "train_sft", "type": "chat_template",
             "field_messages": "messages"},
    "code": {"path": "ise-uiuc/Magicoder-Evol-Instruct-110K", "type": "alpaca", "field_instruction": "instruction",
             "field_output": "response"},
    "vision": {"path": "HuggingFaceH4/llava-instruct-mix-vsft", "split": "train[:5%]", "type": "chat_template"},
}
CHUNKED_LOSS_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # plugins/chunked_loss.py's SUPPORTED


# ── arguments ─────────────────────────────────────────────────────────────────


def configure(parser):
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="what the model is for: chat (Llama 3.1, 3.2), code (Qwen2.5 Coder), "
                             "vision (Llama 3.2 Vision)")
    parser.add_argument("--gpu-memory", required=True, metavar="SIZE",
                        help="memory of one GPU, e.g. 24GiB, 80GB, 16GiB")
    parser.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="GPUs on this machine (default 1); with more, DeepSpeed ZeRO-2 or ZeRO-3 shards over them")
    parser.add_argument("--data", metavar="FILE",
                        help="your training data (JSON lines, JSON, CSV, parquet, or a folder of them; for "
                             "--task code also a folder of source files): its format is detected from its first rows")
    parser.add_argument("--model", metavar="MODEL_ID",
                        help="a registered model id to use (only the method is chosen); default: the largest that fits")
    parser.add_argument("--sequence-len", type=int, metavar="TOKENS",
                        help="tokens per example (default 4096; 2048 for vision)")
    parser.add_argument("--out", default="recipe.yaml", metavar="FILE",
                        help="where to write the recipe (default ./recipe.yaml; '-' prints it to stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (the choice, the estimate, the rejected options) instead of lines")


# ── choosing ──────────────────────────────────────────────────────────────────


@dataclass
class Attempt:
    """One option judged: a model, a method and an engine, with the estimate's verdict."""

    facts: object  # ftcore.api.ModelFacts
    method: str
    engine: str | None  # None (one GPU or DDP), "zero2", "zero3"
    estimate: object  # memory.Estimate

    @property
    def need(self) -> int:
        return int(self.estimate.total_bytes)

    def to_json(self) -> dict:
        return {"model": self.facts.model_id, "size": self.facts.size, "method": self.method,
                "deepspeed": self.engine, "total_bytes": self.need, "fits": bool(self.estimate.fits)}


@dataclass
class Choice:
    chosen: Attempt
    rejected: list[Attempt] = field(default_factory=list)


def candidates(models: dict, task: str, model_id: str | None = None) -> list:
    """The registered models of ``task``, largest first, one per family and size (an Instruct id preferred)."""
    if model_id:
        wanted = model_id.strip().rstrip("/").lower()
        picked = [f for name, f in models.items() if name.lower() == wanted]
        if not picked:
            known = ", ".join(sorted(n for n, f in models.items() if f.task == task)) or "none"
            raise FtcoreError(f"--model {model_id}: not a registered model; registered {task} models: {known}")
        if picked[0].task != task:
            raise FtcoreError(f"--model {model_id}: a {picked[0].task} model; use --task {picked[0].task} with it")
        return picked
    best = {}
    for facts in models.values():
        if facts.task != task:
            continue
        key = (facts.family, facts.size)
        held = best.get(key)
        if held is None or (_instruct(facts) and not _instruct(held)):
            best[key] = facts
    return sorted(best.values(), key=lambda f: (-f.parameters, f.model_id))


def _instruct(facts) -> bool:
    return "instruct" in facts.model_id.lower()


def engines(gpus: int) -> tuple:
    return (None,) if gpus <= 1 else ("zero2", "zero3")


def choose(models: list, *, task, gpu_memory_bytes, gpus, sequence_len, estimate, settings) -> Choice:
    """The first option that fits, models in the order given, methods full → LoRA → QLoRA, then engines.

    ``estimate(config, settings, gpu_memory_bytes=, gpus=)`` and ``settings(recipe keys) -> Settings`` are
    memory.py's (``Settings.from_recipe`` reads the mapping as it reads a recipe; tests pass stand-ins). Raises FtcoreError naming the smallest option's need when none fits.
    """
    tried = []
    for facts in models:
        for method in METHODS:
            for engine in engines(gpus):
                mapping = recipe_keys(facts, method, task, engine=engine, sequence_len=sequence_len)
                result = estimate(facts.config, settings(mapping), gpu_memory_bytes=gpu_memory_bytes, gpus=gpus)
                attempt = Attempt(facts, method, engine, result)
                if result.fits:
                    return Choice(attempt, tried)
                tried.append(attempt)
    if not tried:
        raise FtcoreError(f"no registered model for --task {task} (the models plugin registers them; "
                          "see `ftcore plugins`)")
    smallest = min(tried, key=lambda a: a.need)
    on = f"{gpus} GPUs of {_gib(gpu_memory_bytes)}" if gpus > 1 else f"a GPU of {_gib(gpu_memory_bytes)}"
    raise FtcoreError(f"nothing for --task {task} fits {on}: the smallest option, {_option(smallest)}, needs "
                      f"{_gib(smallest.need)} per GPU; give more GPU memory (--gpu-memory) or more GPUs (--gpus)")


def _option(attempt: Attempt) -> str:
    where = {"zero2": " under ZeRO-2", "zero3": " under ZeRO-3"}.get(attempt.engine, "")
    return f"{_name(attempt.facts)} with {METHOD_NAMES[attempt.method]}{where}"


def _name(facts) -> str:
    """``Llama 3.1 8B``, ``Llama 3.2 Vision 90B`` (a word of the size already in the family is said once)."""
    if not (facts.family and facts.size):
        return facts.model_id
    family = facts.family.split()
    return " ".join(family + [w for w in facts.size.split() if w not in family])


def _gib(n) -> str:
    n = float(n)
    if n >= 1024 * GiB:
        return f"{n / (1024 * GiB):.1f} TiB"
    return f"{n / GiB:.1f} GiB"


# ── the recipe's keys ─────────────────────────────────────────────────────────


def recipe_keys(facts, method: str, task: str, *, engine=None, sequence_len=None, dataset=None) -> dict:
    """The recipe of one option, as a plain mapping in the order it is written (the estimate reads it too)."""
    model_type = facts.config.get("model_type")
    seq = sequence_len or (2048 if task == "vision" else 4096)
    keys = {"base_model": facts.model_id}
    if task == "code":
        keys["chat_template"] = "qwen_25"
        keys["special_tokens"] = {"pad_token": "<|endoftext|>"}
    if task == "vision":
        keys["chat_template"] = "llama3_2_vision"
    if method == "qlora":
        keys.update(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        if engine == "zero3":
            keys["bnb_4bit_quant_storage"] = "bfloat16"
    keys["datasets"] = [dict(dataset or PLACEHOLDER[task])]
    keys["val_set_size"] = 0.02 if task == "vision" else 0.01
    keys["sequence_len"] = seq
    keys["sample_packing"] = task != "vision"
    keys["train_on_inputs"] = False
    if method != "full":
        r = 32 if method == "qlora" else 16
        keys.update(adapter=method, lora_r=r, lora_alpha=2 * r, lora_dropout=0.05)
        if task == "vision":
            keys["freeze_mm_modules"] = True
        else:
            keys["lora_target_linear"] = True
    keys["micro_batch_size"] = 1
    keys["gradient_accumulation_steps"] = 16
    keys["num_epochs"] = 2 if task == "code" else 1
    keys["optimizer"] = "adamw_torch_fused" if method == "lora" else "paged_adamw_8bit"
    keys["learning_rate"] = 1e-5 if method == "full" else (1e-4 if task == "code" else 2e-4)
    keys.update(lr_scheduler="cosine", warmup_ratio=0.03, weight_decay=0.01 if method == "full" else 0.0,
                max_grad_norm=1.0)
    keys.update(bf16="auto", tf32=True, gradient_checkpointing=True)
    if model_type in CHUNKED_LOSS_TYPES and engine != "zero3":
        keys["chunked_cross_entropy"] = True
    keys["attn_implementation"] = "sdpa"
    if engine:
        keys["deepspeed"] = engine
    if task == "code":
        keys["evaluators"] = ["loss", "code_exec"]
        keys["code_exec"] = {"at": ["end"], "n": 1, "k": [1], "max_new_tokens": 384, "batch_size": 16,
                             "timeout": 10, "memory_mb": 1024}
    if task == "vision":
        keys["evaluators"] = ["loss", "generation"]
        keys["eval_on_start"] = True
        keys["generation"] = {"max_new_tokens": 32, "max_samples": 200}
        keys["vision"] = {"max_images": 1}
    keys.update(logging_steps=10, evals_per_epoch=2 if task == "vision" else 4,
                saves_per_epoch=2 if method == "full" or task == "vision" else 4,
                save_total_limit=1 if method == "full" else 2)
    if method == "full":
        keys["save_only_model"] = True
    keys["seed"] = 42
    short = facts.model_id.rsplit("/", 1)[-1].lower()
    keys["output_dir"] = f"./outputs/{short}-{method}"
    return keys


def _real_estimator():
    """memory.py's ``(estimate, settings from recipe keys, parse_size)``: what ``ftcore estimate`` uses."""
    from . import memory

    def estimate(config, settings, *, gpu_memory_bytes, gpus):
        return memory.estimate(config, settings, gpu_memory_bytes=gpu_memory_bytes, gpus=gpus, suggest=False)

    return estimate, memory.Settings.from_recipe, memory.parse_size


# ── the data ──────────────────────────────────────────────────────────────────


def detect_dataset(path: Path, task: str) -> tuple[dict, str]:
    """``(dataset entry without path, what was seen)`` from the first rows of ``path``; DataError otherwise."""
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if files:
            entry, seen = detect_dataset(files[0], task)
            return entry, f"{seen} (the first of {len(files)} data files in the folder)"
        sources = sorted({p.suffix.lower() for p in path.rglob("*") if p.is_file()
                          and p.suffix.lower() in SOURCE_SUFFIXES and ".git" not in p.parts})
        if task == "code" and sources:
            return ({"type": "code_repo", "include": [f"*{s}" for s in sources]},
                    f"a folder of source files ({', '.join(sources)}): one repository")
        raise DataError(f"--data {path}: a folder with no {', '.join(DATA_SUFFIXES)} files"
                        + (" and no source files" if task == "code" else "")
                        + "; give a data file, or a folder of them")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"--data {path}: no rows in the file")
    return shape(rows, path, task)


def read_rows(path: Path, limit: int = SAMPLE_ROWS) -> list[dict]:
    """The first ``limit`` rows of a JSON lines, JSON, CSV or parquet file, as dicts."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = []
                for row in reader:
                    rows.append({k: v for k, v in row.items() if k is not None and v not in (None, "")})
                    if len(rows) >= limit:
                        break
                if not rows and reader.fieldnames:
                    rows = [{name: "" for name in reader.fieldnames}]
                return rows
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise DataError(f"--data {path}: reading parquet needs pyarrow ({exc})") from exc
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=limit):
                return batch.to_pylist()
            return [{name: "" for name in reader.schema_arrow.names}]
        if suffix in (".jsonl", ".json"):
            return _json_rows(path, limit)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--data {path}: cannot read it: {exc}") from exc
    except DataError:
        raise
    except Exception as exc:  # pyarrow's own errors: not a parquet file
        raise DataError(f"--data {path}: cannot read it as {suffix[1:]}: {exc}") from exc
    raise DataError(f"--data {path}: unknown file type {suffix or '(no extension)'}; "
                    f"known: {', '.join(DATA_SUFFIXES)}, or a folder")


def _json_rows(path: Path, limit: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(f"--data {path}: not valid JSON: {exc}") from exc
        rows = data[:limit]
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    if path.suffix.lower() == ".json" and number == 1:  # one pretty-printed object
                        with open(path, encoding="utf-8") as whole:
                            try:
                                rows = [json.load(whole)]
                            except json.JSONDecodeError as exc2:
                                raise DataError(f"--data {path}: not valid JSON: {exc2}") from exc2
                        break
                    raise DataError(f"--data {path}: row {number} is not valid JSON: {exc}") from exc
                if len(rows) >= limit:
                    break
    bad = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(f"--data {path}: row {bad} is a {type(rows[bad - 1]).__name__}, not an object with columns")
    return rows


def _turns(rows, column) -> list[dict] | None:
    """Every message of ``column`` in the sampled rows, or None when it is not a list of objects there."""
    turns = []
    for row in rows:
        value = row.get(column)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            return None
        turns.extend(value)
    return turns or None


def _has_image(rows, turns, content_key) -> bool:
    if any(row.get("images") for row in rows):
        return True
    for message in turns:
        content = message.get(content_key)
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image" for p in content):
            return True
    return False


def shape(rows: list[dict], path: Path, task: str) -> tuple[dict, str]:
    """The dataset entry (``type`` and the options it needs) for rows of this shape, and a line saying so."""
    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    for column in ("messages", "conversations", "conversation", "chat", "dialog"):
        turns = _turns(rows, column)
        if not turns:
            continue
        keys = set().union(*(m.keys() for m in turns))
        if {"role", "content"} <= keys:
            entry = {"type": "chat_template"}
            if column != "messages":
                entry["field_messages"] = column
            images = _has_image(rows, turns, "content")
            return entry, (f"'{column}' lists of role/content messages"
                           + (" with image parts" if images else "") + " (chat_template)")
        if {"from", "value"} <= keys:
            entry = {"type": "sharegpt"}
            if column != "conversations":
                entry["field_messages"] = column
            images = _has_image(rows, turns, "value")
            return entry, (f"'{column}' lists of from/value turns" + (" with image parts" if images else "")
                           + " (sharegpt)")
    segments = _turns(rows, "segments")
    if segments and {"text", "label"} <= set().union(*(s.keys() for s in segments)):
        return {"type": "input_output"}, "'segments' lists of text/label (input_output)"
    for instruction, output in ALPACA_PAIRS:
        if instruction in columns and output in columns:
            entry = {"type": "alpaca"}
            if instruction != "instruction":
                entry["field_instruction"] = instruction
            if output != "output":
                entry["field_output"] = output
            if instruction == "input":
                entry["field_input"] = "context"  # the input column is the instruction here
            return entry, f"{instruction}/{output} columns (alpaca)"
    if "text" in columns:
        return {"type": "completion"}, "a text column (completion: every token trained)"
    raise DataError(f"--data {path}: cannot tell the format from its first rows: columns found: "
                    f"{', '.join(columns) or 'none'}; formats known: {FORMATS_KNOWN}. Write the datasets entry "
                    "yourself (docs/data.md), or convert the file to one of these shapes")


def data_path(data: Path, out: Path | None) -> str:
    """The path the recipe names: ``${recipe_dir:}/...`` under the recipe's folder, else absolute."""
    data = data.resolve()
    if out is not None:
        folder = out.resolve().parent
        try:
            return "${recipe_dir:}/" + data.relative_to(folder).as_posix()
        except ValueError:
            pass
    return data.as_posix()


# ── writing ───────────────────────────────────────────────────────────────────


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        short = f"{value:.0e}".replace("e-0", "e-")
        return short if 0 < abs(value) < 1e-3 and float(short) == value else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = str(value)
    import yaml

    plain = yaml.safe_dump(text, default_flow_style=True, width=1 << 20).strip()
    if plain.endswith("\n..."):
        plain = plain[:-4].strip()
    if plain.endswith("..."):
        plain = plain[:-3].strip()
    return plain


COMMENTS = {
    "load_in_4bit": "QLoRA: the frozen base loads in 4-bit NF4",
    "bnb_4bit_use_double_quant": "the block constants quantized too (~0.4 bit per parameter saved)",
    "bnb_4bit_quant_storage": "4-bit weights stored in a float type that ZeRO-3 can partition",
    "sample_packing": None,  # set per value below
    "train_on_inputs": "only the replies train",
    "lora_target_linear": "q, k, v, o, gate, up, down",
    "freeze_mm_modules": "the vision tower and projector stay frozen",
    "micro_batch_size": None,
    "gradient_checkpointing": "recompute activations in the backward: one hidden state per layer kept",
    "chunked_cross_entropy": "the loss a chunk of positions at a time: no full sequence x vocabulary logits",
    "attn_implementation": "flash_attention_2 if the flash-attn package is installed",
    "optimizer": None,
    "deepspeed": None,
    "chat_template": None,
}


def _comment(key, keys, method) -> str | None:
    seq = keys["sequence_len"]
    if key == "sample_packing":
        return (f"bins of {seq:,} tokens; examples never attend to each other" if keys[key]
                else "conversations with images are never packed")
    if key == "gradient_accumulation_steps":
        return f"{keys[key]} x {seq:,} = {keys[key] * seq:,} tokens per optimizer step (per GPU)"
    if key == "optimizer":
        return ("paged 8-bit Adam: states in 8 bits, paged to CPU memory instead of failing on a spike"
                if keys[key] == "paged_adamw_8bit" else "fp32 Adam states for the adapter (small)")
    if key == "learning_rate" and method == "full":
        return "every weight trains: an order of magnitude below LoRA's"
    if key == "deepspeed":
        return ("optimizer states and gradients sharded over the GPUs" if keys[key] == "zero2"
                else "weights, gradients and optimizer states sharded over the GPUs")
    if key == "chat_template":
        return {"qwen_25": "Qwen2.5's ChatML turns",
                "llama3_2_vision": "Llama 3's turns; each image part becomes <|image|>",
                "tokenizer_default": "instruction/output rows become conversations in the model's own template"
                }.get(keys[key])
    return COMMENTS.get(key)


STARTS = ("base_model", "load_in_4bit", "datasets", "adapter", "micro_batch_size", "bf16", "evaluators",
          "logging_steps")  # a blank line before each: the groups of the shipped recipes


def render(keys: dict, header: list[str], method: str, dataset_comment: list[str]) -> str:
    """The recipe's YAML text: the header comment, then the keys in groups, with a comment on why where it helps."""
    import textwrap

    lines = []
    for i, line in enumerate(header):
        wrapped = [line] if i < 2 or len(line) <= 98 else textwrap.wrap(
            line, 98, subsequent_indent="    " if line.startswith("  ") else "  ", break_long_words=False,
            break_on_hyphens=False)
        lines += [f"# {part}" if part else "#" for part in wrapped]
    for key, value in keys.items():
        if key in STARTS:
            lines.append("")
        if key == "datasets":
            lines += [f"# {line}" for line in dataset_comment]
            lines.append("datasets:")
            for entry in value:
                for i, (k, v) in enumerate(entry.items()):
                    lines.append(f"  {'- ' if i == 0 else '  '}{k}: {_scalar(v)}")
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_scalar(v)}" for k, v in value.items()]
            continue
        line = f"{key}: {_scalar(value)}"
        comment = _comment(key, keys, method)
        if comment:
            line = f"{line:<34}# {comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str, check=None) -> None:
    """``text`` into ``path`` through a temp file beside it (``check(temp)`` first), then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if check is not None:
            check(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _check_recipe(plugins):
    def check(temp: Path):
        from ftcore.api import RecipeError, load_recipe

        try:
            load_recipe(str(temp), (), plugins)
        except RecipeError as exc:  # a bug of init's, not the user's: say so
            raise FtcoreError(f"ftcore init wrote a recipe that does not validate (please report this): {exc}") from exc

    return check


# ── the command ───────────────────────────────────────────────────────────────


def handle(args) -> int:
    plugins = args.plugins
    estimate, settings, parse_size = _real_estimator()
    try:
        gpu_memory = parse_size(args.gpu_memory)
    except ValueError as exc:
        raise FtcoreError(f"--gpu-memory {args.gpu_memory}: not a size ({exc}); write e.g. 24GiB or 80GB") from exc
    if gpu_memory < GiB // 4:
        raise FtcoreError(f"--gpu-memory {args.gpu_memory}: {gpu_memory} bytes is no GPU; give a unit, e.g. "
                          f"{args.gpu_memory}GiB")
    if args.gpus < 1:
        raise FtcoreError(f"--gpus {args.gpus}: must be 1 or more")
    if args.sequence_len is not None and args.sequence_len < 16:
        raise FtcoreError(f"--sequence-len {args.sequence_len}: must be 16 or more")
    to_stdout = args.out == "-"
    out = None if to_stdout else Path(args.out)
    if out is not None and out.is_dir():
        raise FtcoreError(f"--out {out}: is a folder; name a file, e.g. {out / 'recipe.yaml'}")
    if out is not None and (out.exists() or out.is_symlink()) and not args.force:
        raise FtcoreError(f"--out {out}: exists; choose another file or add --force to overwrite it")

    dataset, seen = None, None
    if args.data:
        entry, seen = detect_dataset(Path(args.data).expanduser(), args.task)
        dataset = {"path": data_path(Path(args.data).expanduser(), out), **entry}
        if args.task == "vision" and "image parts" not in seen:
            seen += "; no image parts in its first rows: the vision model would train on text only"
        elif args.task != "vision" and "image parts" in seen:
            seen += "; it has images: --task vision trains a model that sees them"

    models = candidates(registered_models(plugins), args.task, args.model)
    choice = choose(models, task=args.task, gpu_memory_bytes=gpu_memory, gpus=args.gpus,
                    sequence_len=args.sequence_len, estimate=estimate, settings=settings)
    chosen = choice.chosen
    keys = recipe_keys(chosen.facts, chosen.method, args.task, engine=chosen.engine,
                       sequence_len=args.sequence_len, dataset=dataset)
    if dataset and dataset["type"] == "alpaca" and args.task == "chat":
        keys = _with_template(keys, "tokenizer_default")
    hint = _shorter_hint(args, choice, estimate, settings, gpu_memory)
    command = _command(args, out)
    text = render(keys, header_lines(args, chosen, choice.rejected, command, gpu_memory, keys),
                  chosen.method, dataset_lines(args, seen))
    if to_stdout:
        with tempfile.TemporaryDirectory() as folder:  # validated all the same
            _check_recipe(plugins)(_write_plain(Path(folder) / "recipe.yaml", text))
    else:
        write_atomically(out, text, check=_check_recipe(plugins))

    if args.json:
        print(json.dumps(_json(args, choice, keys, out, gpu_memory, seen, text if to_stdout else None, hint)))
        return 0
    report = sys.stderr if to_stdout else sys.stdout
    if to_stdout:
        sys.stdout.write(text)
    for line in summary_lines(args, choice, out, gpu_memory, seen, command, hint):
        print(line, file=report)
    return 0


def _write_plain(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _with_template(keys, template):
    new = {}
    for k, v in keys.items():
        new[k] = v
        if k == "base_model":
            new["chat_template"] = template
    return new


def _command(args, out) -> str:
    target = "recipe.yaml" if out is None else str(out)
    run = f"ftcore run {target}"
    if args.gpus > 1:
        run += f" --nproc {args.gpus}"
    return run


def _facts_lines(facts) -> list[str]:
    gated = (f"yes: accept the license on https://huggingface.co/{facts.model_id} and log in (`hf auth login` "
             "or HF_TOKEN) before the first run" if facts.gated else "no")
    lines = [f"License: {facts.license}" + (f" ({facts.license_url})" if facts.license_url else ""),
             f"Gated: {gated}"]
    notes = [part for part in (facts.notes or "").split("; ") if part and not part.startswith("gated on the Hub")]
    if notes:
        lines.append(f"Note: {'; '.join(notes)}")
    return lines


def _breakdown(estimate) -> str:
    parts = [f"{k} {_gib(v)}" for k, v in (getattr(estimate, "breakdown", None) or {}).items() if v]
    return ", ".join(parts)


def header_lines(args, chosen, rejected, command, gpu_memory, keys) -> list[str]:
    est = chosen.estimate
    on = f"{args.gpus} GPUs with {args.gpu_memory} each" if args.gpus > 1 else f"one GPU with {args.gpu_memory}"
    what = f"{METHOD_NAMES[chosen.method]} of {_name(chosen.facts)} ({chosen.facts.model_id}) on {on}"
    if chosen.engine:
        what += f", DeepSpeed {chosen.engine.replace('zero', 'ZeRO-')}"
    invoked = f"ftcore init --task {args.task} --gpu-memory {args.gpu_memory}"
    if args.gpus > 1:
        invoked += f" --gpus {args.gpus}"
    if args.model:
        invoked += f" --model {args.model}"
    if args.sequence_len:
        invoked += f" --sequence-len {args.sequence_len}"
    if args.data:
        invoked += f" --data {args.data}"
    override = "learning_rate=1e-4 num_epochs=2" if chosen.method != "full" else "learning_rate=5e-6 num_epochs=2"
    lines = [command, f"Example override: {command} {override}", "",
             f"{what[0].upper()}{what[1:]}.", f"Written by `{invoked}`.", *_facts_lines(chosen.facts), "",
             f"Estimated memory per GPU (micro batch {keys['micro_batch_size']} x {keys['sequence_len']:,} tokens): "
             f"{_gib(est.total_bytes)} of {_gib(gpu_memory)}, {_gib(est.headroom_bytes)} headroom"]
    row = ""
    for part in _breakdown(est).split(", ") if _breakdown(est) else []:  # whole "name N GiB" parts per line
        if row and len(row) + len(part) > 90:
            lines.append(f"  {row},")
            row = ""
        row = f"{row}, {part}" if row else part
    if row:
        lines.append(f"  {row}")
    if rejected:
        lines.append("Tried first and too big (estimated need per GPU):")
        lines += [f"  {_option(a)}: {_gib(a.need)}" for a in rejected]
    else:
        lines.append("The largest option there is for this task fits.")
    lines += [f"Check again: ftcore estimate {command.split()[2]} --gpu-memory {args.gpu_memory}"
              + (f" --gpus {args.gpus}" if args.gpus > 1 else ""),
              f"Try it on the CPU first (a tiny model of the same architecture): ftcore run {command.split()[2]} "
              "--dry-run"]
    if chosen.method == "qlora" or chosen.method == "lora":
        lines.append("On a CPU (no CUDA GPU) set optimizer=adamw_torch: ftcore checks the optimizer before loading.")
    return lines


def dataset_lines(args, seen) -> list[str]:
    if seen:
        return [f"Your data, detected from its first rows: {seen}."]
    shipped = {"chat": "llama31-qlora.yaml", "code": "qwen25-coder-qlora.yaml", "vision": "llama32-vision-qlora.yaml"}
    return ["PLACEHOLDER data: the Hub data set the shipped recipe " + shipped[args.task] + " trains on.",
            "Replace it with yours (docs/data.md), or run `ftcore init ... --data FILE` to detect its format."]


def summary_lines(args, choice, out, gpu_memory, seen, command, hint=None) -> list[str]:
    chosen = choice.chosen
    est = chosen.estimate
    lines = [f"wrote {out}" if out is not None else "recipe printed above",
             f"  model:   {chosen.facts.model_id} ({_name(chosen.facts)}, "
             f"{chosen.facts.parameters / 1e9:.1f} B parameters)",
             f"  method:  {METHOD_NAMES[chosen.method]}"
             + (f", DeepSpeed {chosen.engine.replace('zero', 'ZeRO-')} over {args.gpus} GPUs" if chosen.engine else ""),
             f"  memory:  {_gib(est.total_bytes)} of {_gib(gpu_memory)} per GPU, {_gib(est.headroom_bytes)} headroom"
             + (f" ({_breakdown(est)})" if _breakdown(est) else "")]
    lines += [f"  {line.split(':', 1)[0].lower() + ':':<9}{line.split(':', 1)[1].strip()}"
              for line in _facts_lines(chosen.facts)]
    lines.append(f"  data:    {seen}" if seen else "  data:    a placeholder (the shipped recipe's Hub data set): "
                                                   "replace it, or use --data FILE")
    for attempt in choice.rejected:
        lines.append(f"  rejected: {_option(attempt)}: needs {_gib(attempt.need)} per GPU (too big)")
    if hint:
        lines.append(f"hint: {hint}")
    lines.append(f"next: {command}")
    return lines


def _shorter_hint(args, choice, estimate, settings, gpu_memory) -> str | None:
    """A line when the next larger model's QLoRA would fit at 2,048 tokens (init keeps 4,096 by default)."""
    if args.sequence_len or args.task == "vision":
        return None
    larger = [a for a in choice.rejected if a.method == "qlora" and a.facts.parameters > choice.chosen.facts.parameters]
    if not larger:
        return None
    nearest = larger[-1]
    keys = recipe_keys(nearest.facts, "qlora", args.task, engine=nearest.engine, sequence_len=2048)
    result = estimate(nearest.facts.config, settings(keys), gpu_memory_bytes=gpu_memory, gpus=args.gpus)
    if not result.fits:
        return None
    return (f"with --sequence-len 2048, {_option(nearest)} would fit ({_gib(result.total_bytes)} per GPU): "
            f"a larger model, shorter examples")


def _json(args, choice, keys, out, gpu_memory, seen, text, hint=None) -> dict:
    chosen = choice.chosen
    facts = chosen.facts
    est = chosen.estimate
    to_json = getattr(est, "to_json", None)
    estimate = to_json() if callable(to_json) else {}
    if isinstance(estimate, str):
        estimate = json.loads(estimate)
    result = {"recipe": None if out is None else str(out), "model": facts.model_id, "family": facts.family,
              "size": facts.size, "parameters": facts.parameters, "method": chosen.method,
              "deepspeed": chosen.engine, "gpus": args.gpus, "gpu_memory_bytes": gpu_memory,
              "total_bytes": int(est.total_bytes), "headroom_bytes": int(est.headroom_bytes), "fits": True,
              "license": facts.license, "license_url": facts.license_url, "gated": facts.gated,
              "dataset": keys["datasets"][0], "data_format": seen, "estimate": estimate,
              "rejected": [a.to_json() for a in choice.rejected], "command": _command(args, out), "hint": hint}
    if text is not None:
        result["text"] = text
    return result
