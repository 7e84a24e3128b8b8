"""Conversations: OpenAI-style ``messages`` rendered by the chat template, labelled turn by turn.

``format_chat`` is the format of ``type: chat_template`` and ``type: sharegpt``
(the two built-in plugins register this one function with their own option
defaults, ``ChatOptions``); ``conversation_segments`` renders a conversation a
format built another way (``type: alpaca`` with a chat template). Public through
``ftcore.api``.

Which tokens train: the turns whose role is in ``roles_to_train`` (default
``["assistant"]``), or whose message has ``train: true``; of each, the content
and, per ``train_on_eos``, the end-of-turn token. Headers and every other turn
get -100. With ``train_on_inputs: true`` everything trains.

How: the conversation is rendered once per prefix (``messages[:i]``); the
difference between two renders is message i's text, in which the content is
located: it ends just before the turn's end-of-turn token, so a short reply
("a", "end") is never found inside the turn's header. The content's leading
and trailing whitespace trains too when the template renders it (chatml), not
when the template trims it (llama3). This works for any template that renders
a conversation as the concatenation of its turns, which chat templates do.

Content parts: a message's content may be a list of parts. Text parts
(``{"type": "text", "text": ...}`` or plain strings) are joined; any other part
``{"type": T, ...}`` goes to the handler a plugin registered for ``T``
(``register_content_parts``; see ``ContentPart`` and ``ContentRow``), which
returns the text standing for it; without one the row is refused. So is a row
whose column of parts (``field_images``: the "image" parts) has items that no
handler takes. What handlers record in ``ContentRow.extras`` becomes the
example's extras.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ftcore.data import ContentPart, ContentRow, RowError
from ftcore.data.tokenize import tokenize_segments
from ftcore.errors import FtcoreError
from ftcore.log import get_logger

# The tokens that end a turn in the common families' chat formats (Llama 3, ChatML/Qwen, Phi-3, Gemma,
# Llama 4, Cohere, Gemma 4, Jamba, ...), looked for in the rendered conversation when the recipe sets no ``eot_tokens``.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eot|>", "<|END_OF_TURN_TOKEN|>",
               "<turn|>", "<|end_of_turn|>", "<|eom|>")
# split_thinking: the tags that wrap a reasoning inside a reply, and those that wrap the answer after it
THINKING_TAGS = (("<think>", "</think>"), ("<reasoning>", "</reasoning>"),
                 ("<|begin_of_thought|>", "<|end_of_thought|>"))
SOLUTION_TAGS = (("<|begin_of_solution|>", "<|end_of_solution|>"),)
EOS_OPTIONS = Literal["turn", "last", "all", "none"]
DEFAULT_ROLES = {"system": ["system"], "user": ["user", "human"], "assistant": ["assistant", "gpt", "model"],
                 "tool": ["tool"]}


class ChatOptions(BaseModel):
    """The keys of a conversation's dataset entry (Axolotl's names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the message keys read when neither the mappings nor the older spellings name them
    default_role_key: ClassVar[str] = "role"
    default_content_key: ClassVar[str] = "content"
    # columns of content parts beside the messages: part type -> the option that names the column
    part_columns: ClassVar[dict[str, str]] = {"image": "field_images"}

    field_messages: str = "messages"
    message_property_mappings: dict[str, str] | None = None
    message_field_role: str | None = None  # Axolotl's older spelling of the mappings
    message_field_content: str | None = None
    message_field_training: str | None = None
    message_field_training_detail: str | None = None  # per message: [{begin_offset, end_offset, train}]
    roles_to_train: list[str] = ["assistant"]
    train_on_eos: EOS_OPTIONS = "turn"
    train_on_eot: EOS_OPTIONS | None = None  # None: as train_on_eos
    field_thinking: str = "reasoning_content"  # the message key holding a reply's reasoning
    template_thinking_key: str = "reasoning_content"  # the message key the chat template reads it from
    split_thinking: bool = False  # <think>...</think> in an assistant content -> the reasoning
    roles: dict[str, list[str]] | None = None
    drop_system_message: bool = False
    chat_template: str | None = None  # Axolotl's per-dataset template: accepted when it matches the recipe's
    field_images: str = "images"  # a column of image parts for the conversation (handled as "image" parts)

    def role_key(self):
        return ((self.message_property_mappings or {}).get("role") or self.message_field_role
                or self.default_role_key)

    def content_key(self):
        return ((self.message_property_mappings or {}).get("content") or self.message_field_content
                or self.default_content_key)


def format_chat(row, dataset, ctx):
    """One conversation row -> ``(text, trained)`` segments, or an example with the extras its parts gave."""
    options = dataset.options
    content = ContentRow(row, dataset, ctx, columns=_columns(row, options, ctx))
    content.messages = messages_of(row, options, content)
    _check_reply(content.messages, options)
    for handler, _plugin in ctx.parts.values():
        finish = getattr(handler, "finish", None)
        if finish is not None:
            finish(content)
    segments = conversation_segments(content.messages, ctx, trained_roles(options), options.train_on_eos,
                                     options.train_on_eot)
    return content_example(segments, content)


def role_aliases(options) -> dict:
    """``{name in the data: role}`` from ``roles`` (or the defaults)."""
    return {source: target for target, sources in (options.roles or DEFAULT_ROLES).items() for source in sources}


def trained_roles(options) -> list:
    """``roles_to_train`` as roles: a name the data uses (``gpt``, or one that ``roles`` maps) counts as its role."""
    aliases = role_aliases(options)
    return [aliases.get(role, role) for role in options.roles_to_train]


def _check_reply(messages, options) -> None:
    """RowError when no message of the conversation would be trained: nothing to learn from the row."""
    if "all" in (options.train_on_eos, options.train_on_eot):
        return
    roles = trained_roles(options)
    if any(m["train"] is True or (m["train"] is None and m["role"] in roles) for m in messages):
        return
    present = ", ".join(sorted({m["role"] for m in messages}))
    raise RowError(f"the conversation has no reply to train on: its messages are {present}, and roles_to_train is "
                   f"{', '.join(options.roles_to_train) or 'empty'}", "no reply to train on")


def content_example(segments, content: ContentRow):
    """A conversation's segments with the parts' texts untrained; tokenized when the parts gave extras."""
    segments = _untrained(segments, content.untrained)
    if not content.extras:
        return segments
    return {**content.extras, **tokenize_segments(segments, content.ctx.tokenizer)}


def _untrained(segments, texts):
    """``segments`` with every occurrence of ``texts`` inside a trained segment made untrained."""
    texts = sorted((t for t in texts if t), key=len, reverse=True)
    if not texts:
        return segments
    pattern = re.compile("|".join(map(re.escape, texts)))
    out = []
    for text, trained in segments:
        if not trained:
            out.append((text, trained))
            continue
        pos = 0
        for match in pattern.finditer(text):
            out += [(text[pos:match.start()], True), (match.group(), False)]
            pos = match.end()
        out.append((text[pos:], True))
    return [(text, trained) for text, trained in out if text]


def _short(value, limit=200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _columns(row, options, ctx) -> dict:
    """``{part type: (column, [items])}`` for the columns of parts the options name (``part_columns``)."""
    found = {}
    for kind, option in getattr(options, "part_columns", {}).items():
        name = getattr(options, option, None)
        value = row.get(name) if name else None
        items = [] if value is None else value if isinstance(value, list) else [value]
        if items and kind not in ctx.parts:
            raise RowError(f"field '{name}' holds {kind} parts, but no installed plugin handles '{kind}' parts",
                           "unsupported content")
        if name:
            found[kind] = (name, items)
    return found


def _handled(part: dict, where: str, message: int, content: ContentRow) -> str:
    kind = part["type"]
    entry = content.ctx.parts.get(kind)
    if entry is None:
        raise RowError(f"{where}: unsupported content part {_short(part)}: no installed plugin handles "
                       f"'{kind}' parts", "unsupported content")
    handler, plugin = entry
    item = ContentPart(kind, part, message, where, content)
    text = handler(item)
    if not isinstance(text, str):
        raise TypeError(f"the '{kind}' content-part handler of plugin '{plugin}' returned {type(text).__name__}, "
                        f"not the text standing for the part")
    content.parts.setdefault(kind, []).append(item)
    content.untrained.add(text)
    return text


def content_text(value, where: str, message: int, content: ContentRow) -> str:
    """A message's content as text: a string, or a list of parts whose non-text parts go to their handlers."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] != "text":
                texts.append(_handled(part, where, message, content))
            else:
                raise RowError(f"{where}: unsupported content part {_short(part)} (a part is a string or an object "
                               f"with a 'type': text parts give their 'text')", "unsupported content")
        return "".join(texts)
    raise RowError(f"{where}: content must be a string or a list of parts, got {type(value).__name__}", "wrong type")


def messages_of(row, options, content: ContentRow) -> list:
    """The row's conversation as ``[{"role", "content", "train"}]``; RowError if malformed.

    ``options`` is a ``ChatOptions``; each content becomes text (``content_text``).
    """
    raw = row.get(options.field_messages)
    if raw is None:
        raise RowError(f"missing field '{options.field_messages}' (row has: {', '.join(sorted(row))})", "missing field")
    if not isinstance(raw, list):
        raise RowError(f"field '{options.field_messages}' must be a list of messages, got {type(raw).__name__}",
                       "wrong type")
    if not raw:
        raise RowError("empty conversation", "empty conversation")
    aliases = role_aliases(options)
    role_key, content_key = options.role_key(), options.content_key()
    train_key = options.message_field_training or "train"
    detail_key = getattr(options, "message_field_training_detail", None)
    think_key = getattr(options, "template_thinking_key", None)
    think_field = ((options.message_property_mappings or {}).get(think_key) or getattr(options, "field_thinking", None)
                   if think_key else None)
    messages = []
    for i, message in enumerate(raw):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise RowError(f"{where} must be an object, got {type(message).__name__}", "wrong type")
        if role_key not in message:
            raise RowError(f"{where}: missing field '{role_key}'", "missing field")
        if not isinstance(message[role_key], str):
            raise RowError(f"{where}: field '{role_key}' must be a string, got {type(message[role_key]).__name__}",
                           "wrong type")
        role = aliases.get(message[role_key])
        if role is None:
            raise RowError(f"{where}: unknown role {message[role_key]!r}; known: {', '.join(sorted(aliases))}",
                           "unknown role")
        if content_key not in message:
            raise RowError(f"{where}: missing field '{content_key}'", "missing field")
        if role == "system" and options.drop_system_message:
            continue
        train = message.get(train_key)
        if train is not None and not isinstance(train, bool):
            raise RowError(f"{where}: field '{train_key}' must be true or false, got {train!r}", "wrong type")
        text = content_text(message[content_key], where, i, content)
        item = {"role": role, "content": text, "train": train}
        if detail_key and message.get(detail_key) is not None:
            if not isinstance(message[content_key], str):
                raise RowError(f"{where}: field '{detail_key}' needs a content that is a string", "wrong type")
            item["train_detail"] = _train_detail(message[detail_key], f"{where}: field '{detail_key}'", len(text))
            if train is None:
                item["train"] = bool(item["train_detail"])  # Axolotl: a detail makes the turn a trained one
        if think_field and message.get(think_field) is not None:
            if not isinstance(message[think_field], str):
                raise RowError(f"{where}: field '{think_field}' must be a string, got "
                               f"{type(message[think_field]).__name__}", "wrong type")
            item["thinking"] = (think_key, message[think_field])
        if getattr(options, "split_thinking", False) and role == "assistant":
            _split_thinking(item, think_key)
        messages.append(item)
    if not any(m["role"] != "system" for m in messages):
        raise RowError("conversation has no user or assistant turn", "empty conversation")
    return messages


def _train_detail(value, where: str, length: int) -> list:
    """``message_field_training_detail``: ``[(begin, end, train)]``, ``end`` inclusive (Axolotl's offsets)."""
    if not isinstance(value, list):
        raise RowError(f"{where} must be a list of {{begin_offset, end_offset, train}}, got {type(value).__name__}",
                       "wrong type")
    spans = []
    for k, span in enumerate(value):
        if not (isinstance(span, dict) and isinstance(span.get("begin_offset"), int)
                and isinstance(span.get("end_offset"), int) and isinstance(span.get("train"), bool)):
            raise RowError(f"{where}[{k}] must be {{begin_offset: int, end_offset: int, train: true/false}}, got "
                           f"{_short(span)}", "wrong type")
        begin, end = span["begin_offset"], span["end_offset"]
        if not 0 <= begin <= end < length:
            raise RowError(f"{where}[{k}]: offsets {begin}..{end} are outside the content (characters 0.."
                           f"{length - 1}; end_offset is the last character of the span)", "wrong value")
        spans.append((begin, end, span["train"]))
    return spans


def _split_thinking(item: dict, think_key) -> None:
    """``split_thinking``: a reasoning between thinking tags in an assistant content becomes the message's
    reasoning (``template_thinking_key``), the rest its content (the answer between solution tags if any)."""
    text = item["content"]
    for opening, closing in THINKING_TAGS:
        start, end = text.find(opening), text.find(closing)
        if start < 0 or end < start:
            continue
        item["thinking"] = (think_key or "reasoning_content", text[start + len(opening):end].strip())
        rest = text[end + len(closing):].lstrip()
        for sol_open, sol_close in SOLUTION_TAGS:
            a, b = rest.find(sol_open), rest.find(sol_close)
            if a >= 0 and b > a:
                rest = rest[a + len(sol_open):b].strip()
                break
        item["content"] = rest
        item.pop("train_detail", None)  # its offsets counted the tags: they no longer fit the content
        return


# ── rendering and label spans ────────────────────────────────────────────────


def _jinja_literal(value) -> str:
    """A JSON-like value as a Jinja literal."""
    import json

    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    raise FtcoreError(f"chat_template_kwargs: {value!r} is not a string, number, true/false, list or mapping")


def with_template_variables(template: str, variables: dict | None) -> str:
    """``template`` with ``variables`` (Axolotl's ``chat_template_kwargs``, e.g. ``enable_thinking: false``) set
    before it renders, as ``apply_chat_template(..., **variables)`` would pass them."""
    if not variables:
        return template
    return "".join(f"{{%- set {name} = {_jinja_literal(value)} -%}}" for name, value in variables.items()) + template


def _template_message(m: dict) -> dict:
    """A message as the chat template sees it: role, content, and the reasoning under the template's key."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("thinking"):
        key, text = m["thinking"]
        out[key] = text
    return out


def _render(tokenizer, template, messages, add_generation_prompt=False):
    """The conversation rendered by the template, in transformers' Jinja sandbox.

    A template that reaches for what the sandbox forbids (Python attributes, ``__class__``, ...) or does not
    parse is the recipe's problem (``FtcoreError``, exit 2); ``raise_exception(...)`` in a template, or an
    error while rendering this conversation, is a bad row, with the template's own message."""
    import jinja2
    from jinja2.exceptions import SecurityError

    try:
        return tokenizer.apply_chat_template([_template_message(m) for m in messages], chat_template=template,
                                             tokenize=False, add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise FtcoreError(f"chat template: refused by Jinja's sandbox ({exc}); chat templates render sandboxed and "
                          f"cannot reach Python objects: use chat_template: with a shipped name, or a template "
                          f"you trust") from None
    except jinja2.TemplateSyntaxError as exc:
        raise FtcoreError(template_syntax_message(exc)) from None
    except jinja2.TemplateError as exc:
        raise RowError(f"the chat template refused this conversation: {exc}", "refused by the chat template") from None


def template_syntax_message(exc) -> str:
    return (f"chat template: line {exc.lineno}: not valid Jinja ({exc.message}); check chat_template_jinja, "
            f"or the template the tokenizer or chat_template names")


def check_template_syntax(template: str) -> None:
    """``FtcoreError`` for a chat template that does not parse, before any row is read."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template  # with transformers' tags
    except ImportError:  # a transformers without it: the first row finds the error instead
        return
    try:
        _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as exc:
        raise FtcoreError(template_syntax_message(exc)) from None


def _turn_starts(tokenizer, template, messages, full):
    """Where each turn starts in ``full`` (and, last, where the conversation ends)."""
    starts = [0]
    for i in range(1, len(messages) + 1):
        text = _render(tokenizer, template, messages[:i])
        if not full.startswith(text):
            raise RowError("the chat template does not render the conversation turn by turn "
                           "(a prefix of it is not a prefix of the whole); use another template", "template")
        starts.append(len(text))
    return starts


def _reply(tokenizer, template, messages, i, full, begin, end, eot_strings, trained):
    """``(start, end)`` of message i's content in ``full``: searched back from its end-of-turn token."""
    turn = full[begin:end]
    raw = messages[i]["content"]
    content = raw.strip()
    closing = [turn.rfind(eot) for eot in eot_strings if eot in turn]
    limit = max(closing) if closing else len(turn)
    at = turn.rfind(content, 0, limit) if content else limit  # from the end: never inside the header
    if at < 0:
        raise RowError(f"message {i}: its content is not found in the rendered template", "template")
    if trained and raw != content:
        # a template that keeps surrounding whitespace renders it as part of the reply: train it too
        lead = len(raw) - len(raw.lstrip())
        trimmed = _render(tokenizer, template, messages[:i] + [{**messages[i], "content": content}])
        if trimmed != full[:end] and at >= lead and turn[at - lead:at - lead + len(raw)] == raw:
            at, content = at - lead, raw
    return begin + at, begin + at + len(content)


def _end_of_turn(full, start, end, eot_strings):
    """``(start, end)`` of the first end-of-turn token in ``full[start:end]``, or None."""
    for eot in eot_strings:
        k = full.find(eot, start, end)
        if k >= 0:
            return k, k + len(eot)
    return None


def end_of_turn_strings(ctx, full: str) -> list:
    """The strings that end a turn in ``full``: the recipe's ``eot_tokens`` when it sets them (only those,
    as Axolotl reads them), else those of ``END_OF_TURN`` the text contains, else the tokenizer's EOS."""
    eos = ctx.tokenizer.eos_token
    wanted = ctx.recipe.get("eot_tokens") if hasattr(ctx.recipe, "get") else None
    if wanted:
        found = [t for t in wanted if t in full]
        _warn_unrendered(ctx.chat_template or "", tuple(wanted))
        return found
    return [t for t in END_OF_TURN if t in full] or ([eos] if eos else [])


@lru_cache(maxsize=32)
def _warn_unrendered(template: str, tokens: tuple) -> None:
    """Once per template: the recipe's ``eot_tokens`` that the chat template never writes (they end no turn)."""
    missing = [t for t in tokens if t not in template]
    if missing and template:
        get_logger(__name__).warning("eot_tokens: %s not in the chat template: no turn ends with %s, so %s never "
                                     "trains", ", ".join(missing), "it" if len(missing) == 1 else "them",
                                     "it" if len(missing) == 1 else "they")


def _wants(option, trained: bool, last: bool) -> bool:
    """Whether ``train_on_eos`` / ``train_on_eot`` = ``option`` trains this turn's token."""
    return option == "all" or (trained and (option == "turn" or (option == "last" and last)))


def conversation_segments(messages, ctx, roles_to_train=("assistant",), train_on_eos="turn", train_on_eot=None):
    """``messages`` (``[{"role", "content", "train"}]``, contents as text) rendered by the chat template,
    as ``(text, trained)`` segments.

    A message's ``train`` (true / false) wins over ``roles_to_train``. ``train_on_eot`` (default: as
    ``train_on_eos``) says which turns' end-of-turn tokens train (the recipe's ``eot_tokens``, else the
    known ones the text contains: ``end_of_turn_strings``): ``"turn"`` (each trained turn's), ``"last"``
    (the last trained turn's), ``"all"`` or ``"none"``; ``train_on_eos`` says the same of the
    tokenizer's EOS token when it follows a turn and is not an end-of-turn token itself. A message may
    also carry ``train_detail`` (``[(begin, end, train)]``, character offsets into its content, ``end``
    inclusive: only the ``train`` spans of a trained turn train) and ``thinking`` (``(template key,
    reasoning)``: rendered under that key; in a trained turn it trains from where the model's output
    starts). The recipe's ``default_system_message`` goes first when the conversation has no system
    message; ``train_on_inputs: true`` trains everything.
    """
    if ctx.recipe.default_system_message and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ctx.recipe.default_system_message, "train": None})
    template = ctx.chat_template
    if not template:
        raise FtcoreError("conversations (type: chat_template or sharegpt) need a chat template, and the "
                          "tokenizer has none; set chat_template: (llama3, chatml, qwen_25, jinja, ...) in the recipe")
    template = with_template_variables(template, ctx.recipe.get("chat_template_kwargs")
                                       if hasattr(ctx.recipe, "get") else None)
    full = _render(ctx.tokenizer, template, messages)
    if ctx.recipe.train_on_inputs:
        return [(full, True)]
    train_on_eot = train_on_eot or train_on_eos
    eot_strings = end_of_turn_strings(ctx, full)
    eos = ctx.tokenizer.eos_token
    if eos and eos in eot_strings and train_on_eot != train_on_eos:
        raise FtcoreError(f"train_on_eot ({train_on_eot}) differs from train_on_eos ({train_on_eos}), but the EOS "
                          f"token {eos} is one of the tokens that end a turn (eot_tokens): it cannot follow both; "
                          f"make them equal, or leave train_on_eot out")
    trained_turns = [i for i, m in enumerate(messages)
                     if (m["train"] if m["train"] is not None else m["role"] in roles_to_train)]
    last = trained_turns[-1] if trained_turns else None
    starts = _turn_starts(ctx.tokenizer, template, messages, full)
    spans = []
    for i in range(len(messages)):
        train_this = i in trained_turns
        reply_start, reply_end = _reply(ctx.tokenizer, template, messages, i, full, starts[i], starts[i + 1],
                                        eot_strings, train_this)
        detail = messages[i].get("train_detail") if train_this else None
        if train_this and detail is not None:
            spans += _detail_spans(messages[i]["content"], full, reply_start, reply_end, detail)
        elif train_this and reply_end > reply_start:
            spans.append((_output_start(ctx.tokenizer, template, messages, i, full, starts[i], reply_start),
                          reply_end))
        # a trained reply runs on to its end-of-turn token (and an EOS right after it); otherwise just the token
        runs_on = train_this and detail is None
        pos = reply_end
        eot = _end_of_turn(full, reply_end, starts[i + 1], eot_strings)
        if eot is not None:
            if _wants(train_on_eot, train_this, i == last):
                spans.append((reply_end, eot[1]) if runs_on else eot)
            else:
                runs_on = False
            pos = eot[1]
        if eos and eos not in eot_strings:
            found = _end_of_turn(full, pos, starts[i + 1], [eos])
            if found is not None and _wants(train_on_eos, train_this, i == last):
                spans.append((pos, found[1]) if runs_on else found)
    return _segments(full, sorted(spans))


def _detail_spans(raw, full, reply_start, reply_end, detail):
    """The trained character spans of a reply given by its ``train_detail`` (offsets into ``raw``)."""
    located = full[reply_start:reply_end]
    lead = 0 if located == raw else max(raw.find(located), 0)  # the template trimmed the content
    base = reply_start - lead
    spans = []
    for begin, end, train in detail:
        if train:
            a, b = max(base + begin, reply_start), min(base + end + 1, reply_end)
            if b > a:
                spans.append((a, b))
    return spans


def _output_start(tokenizer, template, messages, i, full, begin, reply_start):
    """Where message i's trained text starts: its content, or, when it carries a reasoning the template
    rendered before the content, the end of the generation prompt (the model writes the thinking tags too)."""
    thinking = messages[i].get("thinking")
    if not thinking or not thinking[1] or thinking[1] not in full[begin:reply_start]:
        return reply_start
    try:
        prompt = _render(tokenizer, template, messages[:i], add_generation_prompt=True)
    except RowError:
        prompt = ""
    at = full[begin:reply_start].rfind(thinking[1]) + begin
    if full.startswith(prompt) and begin <= len(prompt) <= at:
        return len(prompt)
    return at


def _segments(text, spans):
    out, pos = [], 0
    for start, end in spans:
        if start > pos:
            out.append((text[pos:start], False))
        if end > max(start, pos):
            out.append((text[max(start, pos):end], True))
        pos = max(pos, end)
    if pos < len(text):
        out.append((text[pos:], False))
    return out
