"""Talk to a trained model: ``ftcore generate`` and ``ftcore chat``.

    ftcore generate outputs/my-run --prompt "Reverse the words. sun red"
    ftcore generate outputs/my-run --file prompts.jsonl --out replies.jsonl
    ftcore chat outputs/my-run

``RUN_DIR`` is a run folder (``recipe.yaml``; the adapter over its base, or a
full fine-tuning run's model), loaded by ``ftcore.api.load_trained`` exactly as
``ftcore eval`` loads it (``--base``: the base model alone, ``--no-quantize``:
a QLoRA run's base unquantized), or a plain transformers model folder
(``config.json`` and weights, e.g. what ``ftcore merge`` writes), loaded with
transformers. Prompts are rendered with the folder's saved chat template
(``add_generation_prompt=True``; ``generate --raw``: plain completion), and
generation stops at the end of the turn: the eos tokens and the template's
end-of-turn token (found by rendering a reply and reading the token after it).

This plugin registers the two commands (``register_commands``); importing it
imports neither torch nor transformers, so ``ftcore --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ftcore.api import DataError, FtcoreError, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)

GENERATE_HELP = "generate replies of a trained run (or a model folder) to prompts given or read from JSON lines"
CHAT_HELP = "talk to a trained run (or a model folder) in the terminal, with the reply streamed as it is generated"
SETTINGS = {"max_new_tokens", "temperature", "top_p", "seed", "system"}  # per-line keys of a --file row
SENTINEL = "ftcore-reply-sentinel"


@hookimpl(trylast=True)
def register_commands(register):
    register("generate", GENERATE_HELP, configure_generate, generate_command)
    register("chat", CHAT_HELP, configure_chat, chat_command)


# ── arguments ─────────────────────────────────────────────────────────────────


def _model_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run folder written by `ftcore run`, or a transformers model folder "
                             "(config.json and weights, e.g. from `ftcore merge`)")
    parser.add_argument("--base", action="store_true",
                        help="use the run's base model alone, without what the run trained (to compare)")
    parser.add_argument("--no-quantize", action="store_true",
                        help="load a QLoRA run's base unquantized (by default it loads in 4-bit, as it trained)")
    parser.add_argument("--system", metavar="TEXT", help="a system message before the conversation")
    parser.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                        help="most tokens per reply (default 512; a reply ends earlier at its end of turn)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature; 0 (the default) is greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="nucleus sampling: keep the most likely tokens up to this probability (with --temperature)")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed for sampling (reproducible replies)")


def configure_generate(parser):
    _model_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", metavar="TEXT",
                        help="a prompt (a user message); repeat for several")
    source.add_argument("--file", metavar="JSONL",
                        help='prompts as JSON lines: {"prompt": "..."} or {"messages": [...]}, optionally with '
                             'max_new_tokens, temperature, top_p, seed, system; other fields are copied to the output')
    parser.add_argument("--out", metavar="FILE", help="with --file: write the JSON lines here (default: stdout)")
    parser.add_argument("--raw", action="store_true",
                        help="no chat template: the prompt is plain text the model continues")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="prompts generated together (default 8)")


def configure_chat(parser):
    _model_arguments(parser)
    parser.add_argument("--context", type=int, metavar="TOKENS",
                        help="tokens of conversation kept (default: the run's sequence_len, at most the "
                             "model's context); the oldest turns are dropped beyond it")


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def _settings(args) -> Settings:
    settings = Settings(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    problems = _setting_problems(vars(settings))
    if problems:
        raise FtcoreError("; ".join(f"--{key.replace('_', '-')} {why}" for key, why in problems))
    return settings


def _setting_problems(values: dict) -> list[tuple[str, str]]:
    """``(key, what is allowed)`` for each bad generation setting in ``values``."""
    problems = []
    checks = {
        "max_new_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be a whole number >= 1"),
        "temperature": (lambda v: _number(v) and v >= 0, "must be a number >= 0 (0: greedy)"),
        "top_p": (lambda v: _number(v) and 0 < v <= 1, "must be a number in (0, 1]"),
        "seed": (lambda v: v is None or isinstance(v, int) and not isinstance(v, bool), "must be a whole number"),
        "system": (lambda v: v is None or isinstance(v, str), "must be text"),
    }
    for key, value in values.items():
        ok, allowed = checks[key]
        if not ok(value):
            problems.append((key, f"{allowed}; got {value!r}"))
    return problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ── the model ─────────────────────────────────────────────────────────────────


@dataclass
class Loaded:
    """What the commands talk to."""

    model: object
    tokenizer: object
    description: str  # for the banner: "base + adapter run", ...
    label: str  # "fine-tuned", "base", "model"
    context: int | None  # tokens of conversation the model was trained on / can take


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        folder.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json"))


def load(args) -> Loaded:
    """The run (through ``load_trained``) or the model folder ``args.run_dir`` names."""
    folder = Path(args.run_dir).expanduser()
    if not folder.is_dir():
        raise FtcoreError(f"no such folder: {folder}")
    if (folder / "recipe.yaml").is_file():
        from ftcore.api import load_trained

        trained = load_trained(folder, args.plugins, base=args.base, quantize=False if args.no_quantize else None)
        recipe = trained.recipe
        if args.base:
            description = f"{recipe.base_model} (the base model of {folder}, without what the run trained)"
        elif recipe.adapter:
            description = f"{recipe.base_model} + {recipe.adapter} adapter {folder}"
        else:
            description = f"{folder} (full fine-tuning of {recipe.base_model})"
        context = _context(trained.model, recipe.sequence_len)
        return Loaded(trained.model, trained.tokenizer, description, trained.label, context)
    if _is_model_folder(folder):
        if args.base:
            raise FtcoreError(f"--base needs a run folder (with recipe.yaml naming its base_model); {folder} is a "
                              f"model folder: give the base model's folder as RUN_DIR instead")
        model, tokenizer = _load_folder(folder)
        return Loaded(model, tokenizer, f"{folder}", "model", _context(model, None))
    what = " (it has adapter_config.json: an adapter from elsewhere; fold it into its base with " \
           f"`ftcore merge --adapter {folder} --out DIR`, then give DIR)" if (folder / "adapter_config.json").is_file() else ""
    raise FtcoreError(f"{folder} is neither an ftcore run folder (recipe.yaml, written by `ftcore run`) nor a "
                      f"transformers model folder (config.json and weights, as `ftcore merge` writes){what}")


def _load_folder(folder: Path):
    """A plain transformers model folder on the best device, in the precision it was saved in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", device_map={"": device})
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"cannot load the model folder {folder}: {exc}") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # batches of prompts are padded
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


@contextlib.contextmanager
def quiet_transformers(verbose: bool):
    """transformers' loading bars, notices and FutureWarnings are noise here (kept with --verbose)."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _context(model, sequence_len: int | None) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config  # a vision model's language model
    limits = [n for n in (sequence_len, getattr(config, "max_position_embeddings", None)) if isinstance(n, int)]
    return min(limits) if limits else None


def device_of(model):
    return next(model.parameters()).device


# ── prompts, stopping, generating ─────────────────────────────────────────────


def render(tokenizer, messages) -> str:
    """The conversation as the model sees it, ending with the assistant's turn header."""
    if not getattr(tokenizer, "chat_template", None):
        raise FtcoreError("the tokenizer has no chat template (the run set none and the base model has none); "
                          "use `ftcore generate --raw` for plain completion")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja's TemplateError, raise_exception() in a template
        raise FtcoreError(f"the chat template cannot render this conversation: {exc}") from exc


def stop_ids(tokenizer, model) -> list[int]:
    """Token ids that end a reply: eos (tokenizer's and generation config's) and the template's end of turn."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([configured] if isinstance(configured, int) else configured or [])
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": SENTINEL}], tokenize=False)
        except Exception:  # a template that wants another conversation shape: eos alone then
            text = ""
        after = text.split(SENTINEL, 1)[1] if SENTINEL in text else ""
        added = getattr(tokenizer, "added_tokens_decoder", {})
        for token in tokenizer(after, add_special_tokens=False)["input_ids"][:3]:
            if token in added:  # <|eot_id|>, <|im_end|>, <end_of_turn>, </s>, ...
                ids.add(token)
                break
    return sorted(ids)


@dataclass
class Reply:
    text: str
    tokens: int  # new tokens, the end-of-turn token not counted
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens)


def generate(loaded: Loaded, prompts: list[str], settings: Settings, *, raw: bool = False,
             streamer=None) -> list[Reply]:
    """Replies to rendered ``prompts``, generated together (left-padded)."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    stops = stop_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0] if stops else 0
    side = tokenizer.padding_side
    try:
        tokenizer.padding_side = "left"  # every row's reply starts at the same position
        inputs = tokenizer(prompts, return_tensors="pt", padding=len(prompts) > 1, add_special_tokens=raw)
    finally:
        tokenizer.padding_side = side
    inputs = {key: value.to(device_of(model)) for key, value in inputs.items()}
    options = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=stops or None, pad_token_id=pad,
                   streamer=streamer)
    if settings.temperature > 0:
        options.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:  # greedy; the model's own sampling defaults would only warn
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(settings.seed)
    with torch.inference_mode():
        output = model.generate(**inputs, **options)
    replies = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        ids = row if end is None else row[:end]
        replies.append(Reply(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids),
                             "length" if end is None else "stop"))
    return replies


def text_streamer(tokenizer, write):
    """A transformers ``TextStreamer`` that hands each finished piece of the reply to ``write``."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        started = False

        def on_finalized_text(self, text, stream_end=False):
            if not self.started:  # the reply is shown stripped, as it is kept
                text = text.lstrip()
                self.started = bool(text)
            if text:
                write(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def conversation(system: str | None, messages: list[dict]) -> list[dict]:
    if system and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


# ── ftcore generate ───────────────────────────────────────────────────────────


def read_prompts(path: Path, raw: bool) -> list[dict]:
    """The rows of a prompts file, checked: ``DataError`` naming the file, line and what is allowed."""
    if not path.is_file():
        raise DataError(f"--file {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with \"prompt\" or \"messages\"")
        has_prompt, has_messages = "prompt" in row, "messages" in row
        if has_prompt == has_messages:
            raise DataError(f"{where}: needs exactly one of \"prompt\" (text) or \"messages\" "
                            f"(a list of {{\"role\", \"content\"}}); found {'both' if has_prompt else 'neither'}")
        if has_prompt and not isinstance(row["prompt"], str):
            raise DataError(f"{where}: \"prompt\" must be text")
        if has_messages:
            messages = row["messages"]
            if raw:
                raise DataError(f"{where}: \"messages\" need the chat template, but --raw is set; give \"prompt\"")
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages)):
                raise DataError(f"{where}: \"messages\" must be a non-empty list of "
                                f"{{\"role\": ..., \"content\": ...}} with text values")
        if raw and row.get("system") is not None:
            raise DataError(f"{where}: \"system\" needs the chat template, but --raw is set")
        problems = _setting_problems({key: row[key] for key in SETTINGS if key in row})
        if problems:
            raise DataError(f"{where}: " + "; ".join(f"\"{key}\" {why}" for key, why in problems))
        rows.append(row)
    if not rows:
        raise DataError(f"--file {path}: holds no prompts")
    return rows


def _row_settings(row: dict, default: Settings) -> Settings:
    return replace(default, **{key: row[key] for key in ("max_new_tokens", "temperature", "top_p", "seed")
                               if key in row})


def _row_prompt(loaded: Loaded, row: dict, system: str | None, raw: bool) -> str:
    if raw:
        return row["prompt"]
    system = row.get("system", system)
    messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
    return render(loaded.tokenizer, conversation(system, messages))


def batches(rows: list[dict], default: Settings, size: int):
    """Consecutive rows with the same settings, at most ``size`` at a time: ``(settings, rows)``."""
    batch, settings = [], None
    for row in rows:
        these = _row_settings(row, default)
        if batch and (these != settings or len(batch) == size):
            yield settings, batch
            batch = []
        batch.append(row)
        settings = these
    if batch:
        yield settings, batch


@contextlib.contextmanager
def _output(out: str | None, stdout):
    """Where the JSON lines go: ``stdout``, or ``out`` written whole (a temporary file renamed at the end)."""
    if not out:
        yield stdout
        return
    target = Path(out).expanduser()
    if target.is_dir():
        raise FtcoreError(f"--out {target} is a folder; give a file name")
    if not target.parent.is_dir():
        raise FtcoreError(f"--out {target}: the folder {target.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            yield file
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def generate_command(args) -> int:
    with quiet_transformers(getattr(args, "verbose", False)):
        return _generate(args)


def _generate(args) -> int:
    settings = _settings(args)
    if args.batch_size < 1:
        raise FtcoreError(f"--batch-size must be >= 1; got {args.batch_size}")
    if not args.prompt and not args.file:
        raise FtcoreError("nothing to generate: give --prompt TEXT (repeatable) or --file prompts.jsonl")
    if args.out and not args.file:
        raise FtcoreError("--out goes with --file (replies to --prompt are printed)")
    if args.raw and args.system:
        raise FtcoreError("--system needs the chat template; it cannot go with --raw")
    rows = read_prompts(Path(args.file).expanduser(), args.raw) if args.file else None
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # ftcore's messages to stderr; only replies on stdout
        loaded = load(args)
        if rows is None:
            return _print_replies(loaded, args, settings, stdout)
        with _output(args.out, stdout) as out:
            done = 0
            for batch_settings, batch in batches(rows, settings, args.batch_size):
                prompts = [_row_prompt(loaded, row, args.system, args.raw) for row in batch]
                for row, reply in zip(batch, generate(loaded, prompts, batch_settings, raw=args.raw)):
                    record = {**row, "reply": reply.text, "tokens": reply.tokens,
                              "finish_reason": reply.finish_reason, "model": loaded.label}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                done += len(batch)
                log.info(f"generate: {done}/{len(rows)} prompts")
        if args.out:
            log.info(f"generate: {len(rows)} replies written to {args.out}")
    return 0


def _print_replies(loaded: Loaded, args, settings: Settings, stdout) -> int:
    """Replies to ``--prompt``: streamed one by one on a terminal, else generated together; blank line between."""
    prompts = [prompt if args.raw else render(loaded.tokenizer, conversation(args.system, [
        {"role": "user", "content": prompt}])) for prompt in args.prompt]
    if stdout.isatty():
        def write(text):
            stdout.write(text)
            stdout.flush()

        for i, prompt in enumerate(prompts):
            stdout.write("\n" if i else "")
            generate(loaded, [prompt], settings, raw=args.raw, streamer=text_streamer(loaded.tokenizer, write))
            stdout.write("\n")
        return 0
    replies = []
    for start in range(0, len(prompts), args.batch_size):
        replies += generate(loaded, prompts[start:start + args.batch_size], settings, raw=args.raw)
    stdout.write("\n\n".join(reply.text for reply in replies) + "\n")
    stdout.flush()
    return 0


# ── ftcore chat ───────────────────────────────────────────────────────────────

CHAT_COMMANDS = "/reset (start over), /system TEXT (set the system message; /system alone clears it), /exit"


class Screen:
    """The chat's output: rich colours on a terminal (unless NO_COLOR), plain text otherwise."""

    def __init__(self, stream):
        self.stream = stream
        self.console = None
        if stream.isatty():
            from rich.console import Console

            self.console = Console(file=stream, highlight=False)

    def say(self, text: str, style: str = "dim"):
        """A line of the chat's own (banner, notices), never the model's text."""
        if self.console is not None:
            self.console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def label(self, text: str):
        if self.console is not None:
            self.console.print(text, style="bold cyan", end="", markup=False)
        else:
            self.stream.write(text)
        self.stream.flush()

    def write(self, text: str):  # the model's reply, as it comes
        self.stream.write(text)
        self.stream.flush()


def fit(tokenizer, system: str | None, messages: list[dict], budget: int | None):
    """``(rendered prompt, its token count, messages kept)``, dropping the oldest exchanges beyond ``budget``."""
    while True:
        text = render(tokenizer, conversation(system, messages))
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if budget is None or count <= budget or len(messages) <= 1:
            return text, count, messages
        messages = messages[2:]  # the oldest user message and its reply


def _budget(context: int | None, max_new_tokens: int) -> int | None:
    if context is None:
        return None
    return max(context - max_new_tokens, context // 2)


def chat_command(args) -> int:
    with quiet_transformers(getattr(args, "verbose", False)):
        return _chat(args)


def _chat(args) -> int:
    settings = _settings(args)
    if args.context is not None and args.context < 16:
        raise FtcoreError(f"--context must be at least 16 tokens; got {args.context}")
    screen = Screen(sys.stdout)
    loaded = load(args)
    context = args.context or loaded.context
    budget = _budget(context, settings.max_new_tokens)
    render(loaded.tokenizer, [{"role": "user", "content": "hi"}])  # no template: say so now, not after typing
    model = loaded.model
    device = device_of(model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    screen.say(f"ftcore chat · {loaded.description} · {device} {dtype} · /help for commands, /exit or Ctrl-D quits")
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())

    system, messages = args.system, []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            screen.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                messages = []
                screen.say("(conversation cleared)")
            elif command == "/system":
                system = rest.strip() or None
                screen.say(f"(system message {'set' if system else 'cleared'}; it applies from the next reply)")
            elif command == "/help":
                screen.say(CHAT_COMMANDS)
            else:
                screen.say(f"unknown command {command}; the commands are {CHAT_COMMANDS}", style="yellow")
            continue

        prompt, count, kept = fit(loaded.tokenizer, system, [*messages, {"role": "user", "content": text}], budget)
        if budget is not None and count > budget:
            screen.say(f"(that message is too long: {count} tokens with the template, and the conversation holds "
                       f"{budget} besides the reply's {settings.max_new_tokens}; not sent)", style="yellow")
            continue
        dropped = (len(messages) + 1 - len(kept)) // 2
        if dropped:
            screen.say(f"(the conversation is longer than the {context}-token context: dropped the oldest "
                       f"{dropped} exchange{'s' if dropped > 1 else ''})", style="yellow")
        log.debug(f"prompt ({count} tokens):\n{prompt}")
        screen.label("model> ")
        try:
            reply = generate(loaded, [prompt], settings, streamer=text_streamer(loaded.tokenizer, screen.write))[0]
        except KeyboardInterrupt:
            screen.write("\n")
            screen.say("(reply interrupted; not kept)", style="yellow")
            messages = kept[:-1]
            continue
        screen.write("\n")
        if reply.finish_reason == "length":
            screen.say(f"(reply cut at --max-new-tokens {settings.max_new_tokens})", style="yellow")
        messages = [*kept, {"role": "assistant", "content": reply.text}]
