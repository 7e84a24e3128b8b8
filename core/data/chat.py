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
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ftcore.data import ContentPart, ContentRow, RowError
from ftcore.data.tokenize import tokenize_segments
from ftcore.errors import FtcoreError

END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
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
    roles_to_train: list[str] = ["assistant"]
    train_on_eos: Literal["turn", "last", "all", "none"] = "turn"
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
    segments = conversation_segments(content.messages, ctx, options.roles_to_train, options.train_on_eos)
    return content_example(segments, content)


def _check_reply(messages, options) -> None:
    """RowError when no message of the conversation would be trained: nothing to learn from the row."""
    if options.train_on_eos == "all":
        return
    if any(m["train"] is True or (m["train"] is None and m["role"] in options.roles_to_train) for m in messages):
        return
    roles = ", ".join(sorted({m["role"] for m in messages}))
    raise RowError(f"the conversation has no reply to train on: its messages are {roles}, and roles_to_train is "
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
    aliases = {}
    for target, sources in (options.roles or DEFAULT_ROLES).items():
        for source in sources:
            aliases[source] = target
    role_key, content_key = options.role_key(), options.content_key()
    train_key = options.message_field_training or "train"
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
        messages.append({"role": role, "content": text, "train": train})
    if not any(m["role"] != "system" for m in messages):
        raise RowError("conversation has no user or assistant turn", "empty conversation")
    return messages


# ── rendering and label spans ────────────────────────────────────────────────


def _render(tokenizer, template, messages):
    """The conversation rendered by the template, in transformers' Jinja sandbox.

    A template that reaches for what the sandbox forbids (Python attributes, ``__class__``, ...) or does not
    parse is the recipe's problem (``FtcoreError``, exit 2); ``raise_exception(...)`` in a template, or an
    error while rendering this conversation, is a bad row, with the template's own message."""
    import jinja2
    from jinja2.exceptions import SecurityError

    try:
        return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                             chat_template=template, tokenize=False)
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


def conversation_segments(messages, ctx, roles_to_train=("assistant",), train_on_eos="turn"):
    """``messages`` (``[{"role", "content", "train"}]``, contents as text) rendered by the chat template,
    as ``(text, trained)`` segments.

    A message's ``train`` (true / false) wins over ``roles_to_train``; ``train_on_eos`` is ``"turn"``
    (each trained turn's end-of-turn token), ``"last"`` (the last trained turn's), ``"all"`` or ``"none"``.
    The recipe's ``default_system_message`` goes first when the conversation has no system message;
    ``train_on_inputs: true`` trains everything.
    """
    if ctx.recipe.default_system_message and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ctx.recipe.default_system_message, "train": None})
    template = ctx.chat_template
    if not template:
        raise FtcoreError("conversations (type: chat_template or sharegpt) need a chat template, and the "
                          "tokenizer has none; set chat_template: (llama3, chatml, qwen_25, jinja, ...) in the recipe")
    full = _render(ctx.tokenizer, template, messages)
    if ctx.recipe.train_on_inputs:
        return [(full, True)]
    eot_strings = [t for t in END_OF_TURN if t in full] or [ctx.tokenizer.eos_token]
    trained_turns = [i for i, m in enumerate(messages)
                     if (m["train"] if m["train"] is not None else m["role"] in roles_to_train)]
    starts = _turn_starts(ctx.tokenizer, template, messages, full)
    spans = []
    for i in range(len(messages)):
        train_this = i in trained_turns
        reply_start, reply_end = _reply(ctx.tokenizer, template, messages, i, full, starts[i], starts[i + 1],
                                        eot_strings, train_this)
        eot = _end_of_turn(full, reply_end, starts[i + 1], eot_strings)
        want_eot = (train_on_eos == "all" or
                    (train_this and train_on_eos == "turn") or
                    (train_this and train_on_eos == "last" and i == trained_turns[-1]))
        if train_this and reply_end > reply_start:
            spans.append((reply_start, reply_end))
        if want_eot and eot is not None:
            # a trained reply runs on to its end-of-turn token; otherwise just the token
            spans.append((reply_end, eot[1]) if train_this else eot)
    return _segments(full, sorted(spans))


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
