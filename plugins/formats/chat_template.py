"""``type: chat_template``: OpenAI-style ``messages`` rendered by the chat template.

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

``type: sharegpt`` (``sharegpt.py``) registers this module's ``chat_template``
function with other option defaults: one implementation for both. A format
that builds its messages another way can call ``conversation_segments``.
"""

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.data import RowError

FTCORE_CONTRACT = "1"

END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
DEFAULT_ROLES = {"system": ["system"], "user": ["user", "human"], "assistant": ["assistant", "gpt", "model"],
                 "tool": ["tool"]}


class ChatTemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # the message keys read when neither the mappings nor the older spellings name them
    default_role_key: ClassVar[str] = "role"
    default_content_key: ClassVar[str] = "content"

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
    field_images: str = "images"  # a column of images for the conversation (vision models: vision.py)

    def role_key(self):
        return ((self.message_property_mappings or {}).get("role") or self.message_field_role
                or self.default_role_key)

    def content_key(self):
        return ((self.message_property_mappings or {}).get("content") or self.message_field_content
                or self.default_content_key)


def _content_text(content, where, image_token=None, images=None):
    """A message's content as text; with ``image_token`` (a vision model's tokenizer), each image
    part becomes that token and is appended to ``images``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "image" and image_token:
                parts.append(image_token)
                images.append({k: v for k, v in part.items() if k != "type"})
            else:
                raise RowError(f"{where}: unsupported content part {part!r} (text parts only; image parts need "
                               f"a vision plugin)", "unsupported content")
        return "".join(parts)
    raise RowError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}", "wrong type")


def messages_of(row, options, image_token=None, images=None):
    """The row's conversation as ``[{"role", "content", "train"}]``; RowError if malformed.

    With ``image_token``, image parts are rendered as that token and collected in ``images``.
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
        train_key = options.message_field_training or "train"
        train = message.get(train_key)
        if train is not None and not isinstance(train, bool):
            raise RowError(f"{where}: field '{train_key}' must be true or false, got {train!r}", "wrong type")
        content = _content_text(message[content_key], where, image_token, images)
        messages.append({"role": role, "content": content, "train": train})
    if not any(m["role"] != "system" for m in messages):
        raise RowError("conversation has no user or assistant turn", "empty conversation")
    return messages


def _render(tokenizer, template, messages):
    return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                         chat_template=template, tokenize=False)


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


def chat_template(row, dataset, ctx):
    from ftcore.plugins import vision

    token, images = vision.image_token(ctx.tokenizer), []
    options = dataset.options
    messages = messages_of(row, options, token, images)
    field = getattr(options, "field_images", None)
    if token is None:
        if field and row.get(field):
            raise RowError(f"field '{field}' holds images, but the tokenizer has no image token: "
                           f"train a vision model (Llama 3.2 Vision) on it", "unsupported content")
        return conversation_segments(messages, options, ctx)
    images = vision.row_images(row, field, messages, images, token) if field else [(i, None) for i in images]
    return vision.example(conversation_segments(messages, options, ctx), images, ctx, token, dataset)


def conversation_segments(messages, options, ctx):
    """``messages`` (from ``messages_of``) rendered by the chat template, as ``(text, trained)`` segments."""
    if ctx.recipe.default_system_message and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ctx.recipe.default_system_message, "train": None})
    template = ctx.chat_template
    if not template:
        from ftcore import FtcoreError

        raise FtcoreError("conversations (type: chat_template or sharegpt) need a chat template, and the "
                          "tokenizer has none; set chat_template: (llama3, chatml, qwen_25, jinja, ...) in the recipe")
    full = _render(ctx.tokenizer, template, messages)
    if ctx.recipe.train_on_inputs:
        return [(full, True)]
    eot_strings = [t for t in END_OF_TURN if t in full] or [ctx.tokenizer.eos_token]
    trained_turns = [i for i, m in enumerate(messages)
                     if (m["train"] if m["train"] is not None else m["role"] in options.roles_to_train)]
    starts = _turn_starts(ctx.tokenizer, template, messages, full)
    spans = []
    for i in range(len(messages)):
        train_this = i in trained_turns
        reply_start, reply_end = _reply(ctx.tokenizer, template, messages, i, full, starts[i], starts[i + 1],
                                        eot_strings, train_this)
        eot = _end_of_turn(full, reply_end, starts[i + 1], eot_strings)
        want_eot = (options.train_on_eos == "all" or
                    (train_this and options.train_on_eos == "turn") or
                    (train_this and options.train_on_eos == "last" and i == trained_turns[-1]))
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


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for key in ("datasets", "test_datasets"):
        for i, spec in enumerate(getattr(recipe, key) or []):
            own = spec.options.chat_template if isinstance(spec.options, ChatTemplateOptions) else None
            if own and own != (recipe.chat_template or "tokenizer_default"):
                error(f"{key}[{i}].chat_template", f"'{own}' differs from the recipe's chat_template "
                      f"({recipe.chat_template or 'tokenizer_default'}); one template per run: set it at the top level")


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("chat_template", chat_template, ChatTemplateOptions)
