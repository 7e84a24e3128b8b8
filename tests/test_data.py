"""The data path: rows -> formatted -> tokens and labels, with exact loss masks.

Only tokenizers are loaded (the tiny Llama 3 and Qwen2.5 ones from conftest,
with their real special tokens); no model, so the whole file runs in seconds.

The mask tests compare against expectations built here, independently of the
formats: the text each template renders and which characters of it are
trained. A token is then checked against those characters: wholly inside a
trained span -> trained, wholly outside -> -100. Where a byte-level tokenizer
merges a reply's leading whitespace with the newline before it into one token,
that token straddles the boundary; this is the only straddle allowed, it must
be trained (tokenize.py: a token trains when it overlaps a trained segment),
and every row without one must decode to exactly the expected trained text.
"""

import csv
import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from conftest import COLORS, alpaca_rows, chat_rows, write_jsonl

from ftcore import hooks
from ftcore.data import IGNORE_INDEX, FormatContext
from ftcore.data.prepare import format_row, prepare_datasets, set_chat_template
from ftcore.errors import DataError, FtcoreError
from ftcore.api import ALPACA_PREAMBLE as PREAMBLE
from ftcore.api import ALPACA_PREAMBLE_WITH_INPUT as PREAMBLE_WITH_INPUT
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.testing import trained_runs  # the trained tokens, one decoded string per contiguous run
from ftcore.recipe.load import RawRecipe

PLUGINS = load_plugins()
FORMATS = hooks.dataset_formats(PLUGINS)
TEMPLATES = hooks.chat_templates(PLUGINS)


# ── helpers ────────────────────────────────────────────────────────────────


def make_recipe(**keys):
    """A validated recipe, as ``ftcore validate`` builds it (no model is ever loaded from it)."""
    return validate(RawRecipe({"base_model": "unused/model", **keys}, None), PLUGINS)


def prepare(tokenizer, **keys):
    """Prepare the recipe's data the way ``ftcore run`` does."""
    recipe = make_recipe(**keys)
    template = set_chat_template(recipe, tokenizer, TEMPLATES)
    return prepare_datasets(recipe, tokenizer, FORMATS, template)


def format_one(tokenizer, row, type, chat_template=None, train_on_inputs=False, recipe_keys=None, **options):
    """One row through its format, without a file."""
    recipe = make_recipe(datasets=[{"path": "unused.jsonl", "type": type, **options}],
                         chat_template=chat_template, train_on_inputs=train_on_inputs, **(recipe_keys or {}))
    template = set_chat_template(recipe, tokenizer, TEMPLATES)
    spec = recipe.datasets[0]
    (function, _options), _plugin = FORMATS[type]
    return format_row(row, spec, function, FormatContext(tokenizer=tokenizer, recipe=recipe, chat_template=template))


def decode(tokenizer, ids):
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)




def trained_text(tokenizer, example):
    return "".join(trained_runs(tokenizer, example))


def write_lines(path, lines):
    """Write raw lines (bytes or str) to ``path``, one per line."""
    path = Path(path)
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


# ── random rows ────────────────────────────────────────────────────────────

# Short words that also occur in the templates' scaffolding ("a", "id", "end", "user", ...) catch a
# reply found in a turn's header instead of where it is; non-ASCII words exercise byte-level tokens.
WORDS = COLORS + ["a", "id", "end", "art", "user", "system", "assistant", "header", "im", "start", "eot", "Yes",
                  "no", "42", "3.14", "x+y", "(ok)", "don't", "café", "naïve", "日本", "!", "?", "-"]
EDGES = ["", "", "", " ", "  ", "\n", " \n", "\n\n", "\t", " \n "]
SEPARATORS = [" ", " ", " ", ", ", "\n", ". ", "  ", "\n\n"]


def random_text(r):
    words = [r.choice(WORDS) for _ in range(r.randint(1, 8))]
    body = words[0] + "".join(r.choice(SEPARATORS) + w for w in words[1:])
    return r.choice(EDGES) + body + r.choice(EDGES)


def random_conversation(r):
    messages = []
    if r.random() < 0.5:
        messages.append({"role": "system", "content": random_text(r)})
    for _ in range(r.randint(1, 4)):
        messages.append({"role": "user", "content": random_text(r)})
        messages.append({"role": "assistant", "content": random_text(r)})
        if r.random() < 0.1:  # two replies in a row
            messages.append({"role": "assistant", "content": random_text(r)})
    if r.random() < 0.15:  # ends with an unanswered question
        messages.append({"role": "user", "content": random_text(r)})
    return {"messages": messages}


def random_alpaca(r):
    row = {"instruction": random_text(r), "output": random_text(r)}
    choice = r.random()
    if choice < 0.4:
        row["input"] = random_text(r)
    elif choice < 0.6:
        row["input"] = ""
    return row


def random_completion(r):
    return {"text": random_text(r)}


SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}


def random_sharegpt(r):
    """A random conversation in ShareGPT's shape; ``as_messages`` turns it back."""
    return {"conversations": [{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]}
                              for m in random_conversation(r)["messages"]]}


def as_messages(row):
    if "messages" in row:
        return row["messages"]
    roles = {name: role for role, name in SHAREGPT_NAMES.items()}
    return [{"role": roles[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]


def random_segments(r):
    """Template-free segments: an untrained start, then a random mix, at least one trained text."""
    segments = [{"text": random_text(r), "label": False}]
    for _ in range(r.randint(1, 5)):
        segments.append({"text": r.choice(["", " ", "\n", "Q: ", random_text(r)]), "label": r.random() < 0.5})
    segments.append({"text": random_text(r).strip() or "x", "label": True})
    return {"segments": segments}


# ── expectations, built independently of the formats ──────────────────────
# Each gives [(text, trained)] pieces; the example's text is their join, without the BOS token
# (Llama: the tokenizer's or the template's BOS is checked separately, as input_ids[0]).


def expected_chat(template, row):
    pieces = []
    messages = as_messages(row)
    if template == "qwen_25" and messages[0]["role"] != "system":
        pieces.append(("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                       "<|im_end|>\n", False))
    for m in messages:
        reply = m["role"] == "assistant"
        if template in ("llama3", "llama3_2_vision"):
            pieces += [(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", False),
                       (m["content"].strip(), reply), ("<|eot_id|>", reply)]
        else:
            pieces += [(f"<|im_start|>{m['role']}\n", False), (m["content"], reply), ("<|im_end|>", reply),
                       ("\n", False)]
    return pieces


def expected_alpaca(row, eos):
    extra = row.get("input")
    prompt = (PREAMBLE_WITH_INPUT if extra else PREAMBLE) + f"### Instruction:\n{row['instruction']}\n\n"
    if extra:
        prompt += f"### Input:\n{extra}\n\n"
    prompt += "### Response:\n"
    return [(prompt, False), (row["output"], True), (eos, True)]


def expected_completion(row, eos):
    return [(row["text"], True), (eos, True)]


def check_masks(tokenizer, example, pieces, bos, train_on_inputs):
    """Assert the example's tokens and labels match ``pieces``; return True if the row had no straddle."""
    body = "".join(text for text, _ in pieces)
    enc = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = example["input_ids"], example["labels"]
    prefix = [tokenizer.bos_token_id] if bos else []
    assert ids == prefix + enc["input_ids"], "input_ids are not the expected text, tokenized once"
    assert len(labels) == len(ids)
    bos_id = tokenizer.bos_token_id
    if bos:
        assert ids.count(bos_id) == 1 and ids[0] == bos_id, "exactly one BOS, at position 0"
        assert labels[0] == IGNORE_INDEX, "the BOS is never trained"
    else:
        assert bos_id is None or bos_id not in ids
    for token, label in zip(ids, labels):
        assert label in (IGNORE_INDEX, token), "a label is either -100 or the token itself"
    if train_on_inputs:
        assert labels[len(prefix):] == ids[len(prefix):], "train_on_inputs: every token but the BOS trains"
        assert decode(tokenizer, [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]) == body
        return True

    spans, pos = [], 0
    for text, trained in pieces:
        if trained and text:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        pos += len(text)
    straddles = 0
    for token, label, (a, b) in zip(enc["input_ids"], labels[len(prefix):], enc["offset_mapping"]):
        piece = body[a:b]
        inside = any(s <= a and b <= e for s, e in spans)
        overlap = any(a < e and s < b for s, e in spans)
        if inside:
            assert label == token, f"token {piece!r} lies in a reply but is not trained"
        elif not overlap:
            assert label == IGNORE_INDEX, f"token {piece!r} lies outside every reply but is trained"
        else:
            starts = [s for s, e in spans if a < s < b]
            assert starts and all(body[s].isspace() and not body[a:s].strip() for s in starts), (
                f"token {piece!r} straddles a trained boundary other than a reply's leading whitespace")
            assert label == token, f"token {piece!r} overlaps a reply but is not trained"
            straddles += 1
    if straddles == 0:
        want = "".join(text for text, trained in pieces if trained)
        assert trained_text(tokenizer, example) == want
    return straddles == 0


def check_segment_masks(tokenizer, example, segments, bos):
    """``type: input_output``: each segment tokenized on its own; its tokens train exactly when it says so."""
    ids, labels = example["input_ids"], example["labels"]
    want_ids, want_labels = ([tokenizer.bos_token_id], [IGNORE_INDEX]) if bos else ([], [])
    for segment in segments:
        piece = tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
        want_ids += piece
        want_labels += piece if segment["label"] else [IGNORE_INDEX] * len(piece)
    assert ids == want_ids and labels == want_labels
    bos_id = tokenizer.bos_token_id
    assert (ids.count(bos_id) == 1 and ids[0] == bos_id) if bos else bos_id is None or bos_id not in ids
    assert tokenizer.eos_token_id not in ids, "no EOS unless the text has one"
    assert trained_text(tokenizer, example) == "".join(s["text"] for s in segments if s["label"])


# ── segments -> tokens and labels ───────────────────────────────────────────


def test_tokenize_segments_trains_a_token_that_overlaps_a_trained_segment(llama, qwen):
    from ftcore.data import RowError
    from ftcore.data.tokenize import tokenize_segments

    for tokenizer in (llama, qwen):
        # " green" is one token that straddles the two segments: it trains
        example = tokenize_segments([("red gr", True), ("een blue", False)], tokenizer)
        assert trained_text(tokenizer, example) == "red green"
        example = tokenize_segments([("red", False), (" green", True), (" blue", False)], tokenizer)
        assert trained_text(tokenizer, example) == " green"
        with pytest.raises(RowError, match="empty"):
            tokenize_segments([("", True)], tokenizer)
    with pytest.raises(TypeError, match=r"\(text, trained\) pairs"):
        tokenize_segments(["red"], llama)


def test_format_row_accepts_a_format_that_returns_tokens(llama):
    recipe = make_recipe(datasets=[{"path": "unused.jsonl", "type": "completion"}])
    ctx = FormatContext(tokenizer=llama, recipe=recipe)
    spec = recipe.datasets[0]
    assert format_row({}, spec, lambda row, d, c: {"input_ids": (1, 2), "labels": [-100, 2]}, ctx) == {
        "input_ids": [1, 2], "labels": [-100, 2]}
    with pytest.raises(TypeError, match="differ in length"):
        format_row({}, spec, lambda row, d, c: {"input_ids": [1, 2], "labels": [2]}, ctx)


# ── 1. the mask property, over formats x templates x tokenizers ───────────

CASES = [
    ("alpaca", None, "llama"),
    ("alpaca", None, "qwen"),
    ("completion", None, "llama"),
    ("completion", None, "qwen"),
    ("chat_template", "llama3", "llama"),
    ("chat_template", "chatml", "qwen"),
    ("chat_template", "qwen_25", "qwen"),
    ("chat_template", "llama3_2_vision", "llama_vision"),
    ("sharegpt", "llama3", "llama"),
    ("sharegpt", "qwen_25", "qwen"),
    ("input_output", None, "llama"),
    ("input_output", None, "qwen"),
]
GENERATORS = {"alpaca": random_alpaca, "completion": random_completion, "chat_template": random_conversation,
              "sharegpt": random_sharegpt, "input_output": random_segments}


@pytest.mark.parametrize("train_on_inputs", [False, True], ids=["masked", "train_on_inputs"])
@pytest.mark.parametrize("type,template,family", CASES, ids=[f"{t}-{c or 'none'}-{f}" for t, c, f in CASES])
def test_mask_property(tokenizers, tmp_path, type, template, family, train_on_inputs):
    tokenizer = tokenizers[family]
    r = random.Random(f"{type}-{template}-{family}")
    rows = [GENERATORS[type](r) for _ in range(120)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = prepare(tokenizer, datasets=[{"path": str(path), "type": type}], chat_template=template,
                   train_on_inputs=train_on_inputs, sequence_len=4096)
    assert data.stats["train"]["rows_dropped"] == {}
    assert len(data.train) == len(rows) and data.eval == []

    eos = tokenizer.eos_token
    bos = family.startswith("llama")
    if type == "input_output":  # exact by construction, whatever train_on_inputs says
        for row, example in zip(rows, data.train):
            check_segment_masks(tokenizer, example, row["segments"], bos)
        return
    exact = 0
    for row, example in zip(rows, data.train):
        if type in ("chat_template", "sharegpt"):
            pieces = expected_chat(template, row)
        elif type == "alpaca":
            pieces = expected_alpaca(row, eos)
        else:
            pieces = expected_completion(row, eos)
        exact += check_masks(tokenizer, example, pieces, bos, train_on_inputs)
    if type == "completion" or template in ("llama3", "llama3_2_vision") or train_on_inputs:
        assert exact == len(rows), "no boundary to straddle here: every row must decode exactly"
    else:  # a reply starting with some whitespace may straddle (see the module docstring)
        assert exact >= len(rows) // 5, f"only {exact} of {len(rows)} rows decode exactly"


def test_the_generated_conversations_cover_what_the_property_claims():
    r = random.Random("chat_template-llama3-llama")
    rows = [random_conversation(r) for _ in range(120)]
    contents = [m["content"] for row in rows for m in row["messages"]]
    assert sum(any(m["role"] == "system" for m in row["messages"]) for row in rows) > 30
    assert sum(sum(m["role"] == "assistant" for m in row["messages"]) > 1 for row in rows) > 50
    assert sum(c != c.strip() for c in contents) > 100
    assert sum(c.startswith(" ") for c in contents) > 20 and sum(c.endswith("\n") for c in contents) > 20
    assert any(row["messages"][-1]["role"] == "user" for row in rows)


def test_llama3_template_on_llama_gives_exactly_one_bos(llama):
    example = format_one(llama, {"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello"}]},
                         "chat_template", chat_template="llama3")
    rendered = llama.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert rendered.startswith("<|begin_of_text|>")  # the template emits BOS, and so would the tokenizer
    assert example["input_ids"].count(llama.bos_token_id) == 1 and example["input_ids"][0] == llama.bos_token_id
    assert decode(llama, example["input_ids"]).startswith("<|begin_of_text|><|start_header_id|>user")


# ── 2. chat_template options ───────────────────────────────────────────────

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Name a color"},
    {"role": "assistant", "content": "Red"},
]


def chat_runs(tokenizer, messages, template="llama3", **options):
    example = format_one(tokenizer, {"messages": messages}, "chat_template", chat_template=template, **options)
    return trained_runs(tokenizer, example)


def test_chat_default_trains_assistant_replies_and_their_eot(llama, qwen):
    assert chat_runs(llama, CONVERSATION) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]
    assert chat_runs(qwen, CONVERSATION, "chatml") == ["Hi there<|im_end|>", "Red<|im_end|>"]


def test_chat_roles_to_train_assistant_and_user(llama):
    assert chat_runs(llama, CONVERSATION, roles_to_train=["assistant", "user"]) == [
        "Hello<|eot_id|>", "Hi there<|eot_id|>", "Name a color<|eot_id|>", "Red<|eot_id|>"]
    assert chat_runs(llama, CONVERSATION, roles_to_train=["user"]) == ["Hello<|eot_id|>", "Name a color<|eot_id|>"]


@pytest.mark.parametrize("train_on_eos,llama3,chatml", [
    ("turn", ["Hi there<|eot_id|>", "Red<|eot_id|>"], ["Hi there<|im_end|>", "Red<|im_end|>"]),
    ("last", ["Hi there", "Red<|eot_id|>"], ["Hi there", "Red<|im_end|>"]),
    ("all", ["<|eot_id|>", "<|eot_id|>", "Hi there<|eot_id|>", "<|eot_id|>", "Red<|eot_id|>"],
     ["<|im_end|>", "<|im_end|>", "Hi there<|im_end|>", "<|im_end|>", "Red<|im_end|>"]),
    ("none", ["Hi there", "Red"], ["Hi there", "Red"]),
])
def test_chat_train_on_eos(llama, qwen, train_on_eos, llama3, chatml):
    assert chat_runs(llama, CONVERSATION, train_on_eos=train_on_eos) == llama3
    assert chat_runs(qwen, CONVERSATION, "chatml", train_on_eos=train_on_eos) == chatml


def test_chat_train_on_eos_all_trains_only_the_eot_of_untrained_turns(qwen):
    messages = [{"role": "user", "content": "Hello \n"}, {"role": "assistant", "content": "Hi there"}]
    assert chat_runs(qwen, messages, "chatml", train_on_eos="all") == ["<|im_end|>", "Hi there<|im_end|>"]


def test_chat_train_on_eos_with_roles_to_train_user_and_assistant(llama):
    assert chat_runs(llama, CONVERSATION, roles_to_train=["assistant", "user"], train_on_eos="last") == [
        "Hello", "Hi there", "Name a color", "Red<|eot_id|>"]


def test_chat_per_message_train_overrides_the_role(llama):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["train"] = False  # the first reply
    messages[3]["train"] = True  # a user turn
    assert chat_runs(llama, messages) == ["Name a color<|eot_id|>", "Red<|eot_id|>"]


def test_chat_message_field_training_names_the_flag(llama):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = False
    messages[4]["train"] = False  # not the flag any more: ignored
    assert chat_runs(llama, messages, message_field_training="weight") == ["Red<|eot_id|>"]


SHAREGPT_STYLE = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                  for m in CONVERSATION]


def test_chat_message_property_mappings(llama):
    example = format_one(llama, {"conversations": SHAREGPT_STYLE}, "chat_template", chat_template="llama3",
                         field_messages="conversations", message_property_mappings={"role": "from", "content": "value"})
    assert trained_runs(llama, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]
    assert "<|start_header_id|>user<|end_header_id|>\n\nHello" in decode(llama, example["input_ids"])


def test_chat_older_message_field_role_and_content(llama):
    example = format_one(llama, {"conversations": SHAREGPT_STYLE}, "chat_template", chat_template="llama3",
                         field_messages="conversations", message_field_role="from", message_field_content="value")
    assert trained_runs(llama, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]


def test_chat_roles_mapping(llama):
    messages = [{"role": "prompter", "content": "Hello"}, {"role": "bot", "content": "Hi there"}]
    roles = {"user": ["prompter"], "assistant": ["bot"]}
    example = format_one(llama, {"messages": messages}, "chat_template", chat_template="llama3", roles=roles)
    assert trained_runs(llama, example) == ["Hi there<|eot_id|>"]
    text = decode(llama, example["input_ids"])
    assert "<|start_header_id|>user<|end_header_id|>" in text and "<|start_header_id|>assistant<|end_header_id|>" in text
    with pytest.raises(ValueError, match="unknown role 'prompter'; known: .*human"):
        format_one(llama, {"messages": messages}, "chat_template", chat_template="llama3")


def test_chat_drop_system_message(llama):
    example = format_one(llama, {"messages": CONVERSATION}, "chat_template", chat_template="llama3",
                         drop_system_message=True)
    text = decode(llama, example["input_ids"])
    assert "Be brief." not in text and "system" not in text
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>")
    assert trained_runs(llama, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]


def test_chat_content_as_a_list_of_text_parts(llama):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a color"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red, "}, "then blue"]}]
    example = format_one(llama, {"messages": messages}, "chat_template", chat_template="llama3")
    assert trained_runs(llama, example) == ["Red, then blue<|eot_id|>"]
    assert "user<|end_header_id|>\n\nName a color<|eot_id|>" in decode(llama, example["input_ids"])


@pytest.mark.parametrize("reply", ["a", "id", "end", "assistant", "header", "start", "eot"])
def test_chat_short_reply_that_also_occurs_in_the_header(llama, qwen, reply):
    messages = [{"role": "user", "content": "Say it"}, {"role": "assistant", "content": reply}]
    assert chat_runs(llama, messages) == [f"{reply}<|eot_id|>"]
    assert chat_runs(qwen, messages, "chatml") == [f"{reply}<|im_end|>"]


def test_chat_reply_whitespace_as_the_template_renders_it(llama, qwen):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nRed  \n"}]
    # llama3 trims the content; chatml keeps it verbatim, and the verbatim reply is what trains.
    assert chat_runs(llama, messages) == ["Red<|eot_id|>"]
    assert chat_runs(llama, messages, train_on_eos="none") == ["Red"]
    example = format_one(qwen, {"messages": messages}, "chat_template", chat_template="chatml")
    text = decode(qwen, example["input_ids"])
    assert "<|im_start|>assistant\n\n\nRed  \n<|im_end|>" in text
    # exactly the reply, or with the header's newline when the tokenizer merges it with the reply's first one
    assert trained_runs(qwen, example) in (["\n\nRed  \n<|im_end|>"], ["\n\n\nRed  \n<|im_end|>"])
    assert chat_runs(qwen, messages, "chatml", train_on_eos="none")[0].endswith("\nRed  \n")


def test_chat_empty_messages_are_allowed(llama, qwen):
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "  "},
                {"role": "assistant", "content": ""}]
    assert chat_runs(llama, messages) == ["Hello<|eot_id|>", "<|eot_id|>"]
    assert chat_runs(qwen, messages, "chatml") == ["Hello<|im_end|>", "<|im_end|>"]


def test_chat_unsupported_content_part(llama):
    messages = [{"role": "user", "content": [{"type": "image", "url": "x.png"}]},
                {"role": "assistant", "content": "Red"}]
    with pytest.raises(ValueError, match="unsupported content part"):
        format_one(llama, {"messages": messages}, "chat_template", chat_template="llama3")


def test_chat_train_on_inputs_trains_the_whole_render(llama):
    example = format_one(llama, {"messages": CONVERSATION}, "chat_template", chat_template="llama3",
                         train_on_inputs=True)
    assert example["labels"][0] == IGNORE_INDEX and example["labels"][1:] == example["input_ids"][1:]
    assert trained_text(llama, example) == llama.apply_chat_template(CONVERSATION, tokenize=False).removeprefix(
        "<|begin_of_text|>")


def test_chat_without_any_template_is_a_clear_error(llama):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(llama.name_or_path)
    bare.chat_template = None
    recipe = make_recipe(datasets=[{"path": "unused.jsonl", "type": "chat_template"}])
    assert set_chat_template(recipe, bare, TEMPLATES) is None
    (function, _), _ = FORMATS["chat_template"]
    with pytest.raises(FtcoreError, match="need a chat template"):
        format_row({"messages": CONVERSATION}, recipe.datasets[0], function,
                   FormatContext(tokenizer=bare, recipe=recipe, chat_template=None))


def test_set_chat_template(llama, qwen):
    recipe = make_recipe(chat_template="llama3")
    with pytest.raises(FtcoreError, match=r"lacks: <\|end_header_id\|>, <\|eot_id\|>, <\|start_header_id\|>"):
        set_chat_template(recipe, qwen, TEMPLATES)
    assert set_chat_template(make_recipe(), llama, TEMPLATES) == llama.chat_template  # the tokenizer's own
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(llama.name_or_path)
    jinja = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|eot_id|>{% endfor %}"
    text = set_chat_template(make_recipe(chat_template="jinja", chat_template_jinja=jinja), fresh, TEMPLATES)
    assert text == jinja and fresh.chat_template == jinja
    example = format_one(fresh, {"messages": CONVERSATION[1:3]}, "chat_template", chat_template="jinja",
                         recipe_keys={"chat_template_jinja": jinja})
    assert decode(fresh, example["input_ids"]) == "<|begin_of_text|>[user] Hello<|eot_id|>[assistant] Hi there<|eot_id|>"
    assert trained_runs(fresh, example) == ["Hi there<|eot_id|>"]


def test_a_long_inline_jinja_template(llama):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(llama.name_or_path)
    comment = "{# " + "a comment long enough that the template cannot be a file name " * 8 + "#}"
    jinja = comment + "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|eot_id|>{% endfor %}"
    assert len(jinja) > 300
    recipe = make_recipe(chat_template="jinja", chat_template_jinja=jinja)
    assert set_chat_template(recipe, fresh, TEMPLATES) == jinja


def test_a_jinja_template_file(llama, tmp_path):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(llama.name_or_path)
    path = tmp_path / "template.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}", encoding="utf-8")
    recipe = make_recipe(chat_template="jinja", chat_template_jinja=str(path))
    assert set_chat_template(recipe, fresh, TEMPLATES) == path.read_text(encoding="utf-8")
    with pytest.raises(FtcoreError, match="cannot read"):
        set_chat_template(make_recipe(chat_template="jinja", chat_template_jinja=str(tmp_path / "nope.jinja")),
                          fresh, TEMPLATES)


# ── 3. bad rows ────────────────────────────────────────────────────────────

GOOD_ALPACA = json.dumps(alpaca_rows(1)[0])
GOOD_CHAT = json.dumps(chat_rows(1)[0])

BAD_ROWS = [
    ("alpaca", json.dumps({"instruction": "Do it."}), "missing field 'output'"),
    ("alpaca", json.dumps({"instruction": "Do it.", "output": 5}), "field 'output' must be a string, got int"),
    ("alpaca", json.dumps({"instruction": ["Do it."], "output": "Done."}), "field 'instruction' must be a string"),
    ("completion", json.dumps({"txt": "hello"}), "missing field 'text'"),
    ("completion", json.dumps({"text": "  \n"}), "field 'text' is empty"),
    ("chat_template", json.dumps({"conversation": []}), "missing field 'messages'"),
    ("chat_template", json.dumps({"messages": "hello"}), "must be a list of messages, got str"),
    ("chat_template", json.dumps({"messages": []}), "empty conversation"),
    ("chat_template", json.dumps({"messages": [{"role": "system", "content": "x"}]}), "no user or assistant turn"),
    ("chat_template", json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "unknown role 'robot'"),
    ("chat_template", json.dumps({"messages": [{"role": ["user"], "content": "x"}]}),
     "field 'role' must be a string, got list"),
    ("chat_template", json.dumps({"messages": [{"role": "user"}]}), "missing field 'content'"),
    ("chat_template", json.dumps({"messages": [{"content": "x"}]}), "missing field 'role'"),
    ("chat_template", json.dumps({"messages": [{"role": "user", "content": 7}]}), "content must be a string"),
    ("chat_template", json.dumps({"messages": ["hello"]}), "message 0 must be an object"),
    ("chat_template", json.dumps({"messages": [{"role": "user", "content": "x", "train": "no"}]}),
     "field 'train' must be true or false, got 'no'"),
    ("alpaca", '{"instruction": "Do it.", "output": ', "malformed JSON"),
    ("alpaca", b'{"instruction": "Do it.", "output": "caf\xe9"}', "not valid UTF-8"),
    ("alpaca", "[1, 2]", "expected a JSON object, got list"),
    ("alpaca", '"just a string"', "expected a JSON object, got str"),
]


@pytest.mark.parametrize("type,line,reason", BAD_ROWS, ids=[f"{t}-{reason}" for t, _, reason in BAD_ROWS])
def test_a_bad_row_names_the_file_the_row_and_the_reason(llama, tmp_path, type, line, reason):
    good = GOOD_CHAT if type == "chat_template" else GOOD_ALPACA if type == "alpaca" else '{"text": "hello"}'
    path = write_lines(tmp_path / "data.jsonl", [good, "", good, line, good])
    with pytest.raises(DataError) as info:
        prepare(llama, datasets=[{"path": str(path), "type": type}], chat_template="llama3")
    message = str(info.value)
    assert message.startswith(f"{path}: row 4: "), message  # the blank line counts: row = line number
    assert reason in message
    assert "on_invalid_example: skip" in message


def test_skip_drops_bad_rows_and_counts_them_by_reason(llama, tmp_path):
    good = alpaca_rows(5)
    lines = [json.dumps(good[0]),
             json.dumps({"instruction": "Do it."}),  # missing field
             '{"instruction": "x", ',  # malformed JSON
             json.dumps(good[1]),
             b'{"instruction": "\xff", "output": "y"}',  # undecodable
             "[1]",  # not an object
             json.dumps({"instruction": "Do it.", "output": 1}),  # wrong type
             json.dumps(good[2]),
             json.dumps({"output": "y"}),  # missing field
             json.dumps(good[3]), json.dumps(good[4])]
    path = write_lines(tmp_path / "data.jsonl", lines)
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], on_invalid_example="skip")
    stats = data.stats["train"]
    assert stats["rows_dropped"] == {"missing field": 2, "malformed JSON": 1, "undecodable line": 1,
                                     "not an object": 1, "wrong type": 1}
    assert stats["rows_read"] == 11 and stats["rows_kept"] == 5 and len(data.train) == 5
    want = prepare(llama, datasets=[{"path": str(write_jsonl(tmp_path / "good.jsonl", good)), "type": "alpaca"}])
    assert data.train == want.train


def test_skip_counts_chat_reasons(llama, tmp_path):
    lines = [GOOD_CHAT, json.dumps({"messages": []}), json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
             GOOD_CHAT, json.dumps({"messages": [{"role": "user", "content": 3}]})]
    path = write_lines(tmp_path / "chat.jsonl", lines)
    data = prepare(llama, datasets=[{"path": str(path), "type": "chat_template"}], chat_template="llama3",
                   on_invalid_example="skip")
    assert data.stats["train"]["rows_dropped"] == {"empty conversation": 1, "unknown role": 1, "wrong type": 1}
    assert data.stats["train"]["rows_kept"] == 2


def test_skip_with_nothing_left_is_an_error(llama, tmp_path):
    path = write_lines(tmp_path / "data.jsonl", ["{", "[]"])
    with pytest.raises(DataError, match="no training examples left.*2 rows read"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], on_invalid_example="skip")


def test_bad_row_in_the_second_file_names_that_file(llama, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    write_lines(tmp_path / "b.jsonl", [GOOD_ALPACA, "{oops"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'b.jsonl'))}: row 2: malformed JSON"):
        prepare(llama, datasets=[{"path": str(tmp_path), "type": "alpaca"}])


def test_a_conversation_without_a_reply_to_train_on_is_a_bad_row(llama, tmp_path):
    # issue 13: a conversation with nothing to train on names its row (it was dropped silently before)
    rows = chat_rows(4) + [{"messages": [{"role": "user", "content": "Anyone?"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=r"chat.jsonl: row 5: the conversation has no reply to train on"):
        prepare(llama, datasets=[{"path": str(path), "type": "chat_template"}], chat_template="llama3")
    data = prepare(llama, datasets=[{"path": str(path), "type": "chat_template"}], chat_template="llama3",
                   on_invalid_example="skip")
    assert data.stats["train"]["rows_dropped"] == {"no reply to train on": 1} and len(data.train) == 4
    trained_user = [{**row, "messages": [{**m, "train": True} for m in row["messages"]]} for row in rows[4:]]
    path = write_jsonl(tmp_path / "marked.jsonl", trained_user)  # a message marked train: true is a reply
    data = prepare(llama, datasets=[{"path": str(path), "type": "chat_template"}], chat_template="llama3")
    assert len(data.train) == 1


# ── 4. long rows ───────────────────────────────────────────────────────────


LIMIT = 200  # the Alpaca prompt alone is about 180 tokens with the tiny tokenizer


def long_and_short(tmp_path, n_long=3):
    """Six alpaca rows, the first ``n_long`` of them longer than LIMIT tokens."""
    rows = alpaca_rows(6)
    for row in rows[:n_long]:
        row["output"] = " ".join(COLORS * 6)
    return rows, write_jsonl(tmp_path / "data.jsonl", rows)


def test_long_rows_are_dropped_and_counted_by_default(llama, tmp_path):
    _, path = long_and_short(tmp_path)
    full = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=4096)
    assert [len(e["input_ids"]) > LIMIT for e in full.train] == [True] * 3 + [False] * 3
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=LIMIT)
    assert data.stats["train"]["rows_dropped"] == {f"longer than sequence_len ({LIMIT})": 3}
    assert data.stats["train"]["rows_read"] == 6 and data.stats["train"]["rows_kept"] == 3
    assert data.train == full.train[3:]


def test_truncate_keeps_long_rows_cut_to_sequence_len(llama, tmp_path):
    _, path = long_and_short(tmp_path)
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=LIMIT,
                   excess_length_strategy="truncate")
    full = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=4096)
    assert data.stats["train"]["rows_dropped"] == {} and len(data.train) == 6
    for cut, whole in zip(data.train, full.train):
        n = min(LIMIT, len(whole["input_ids"]))
        assert cut["input_ids"] == whole["input_ids"][:n] and cut["labels"] == whole["labels"][:n]
    assert [len(e["input_ids"]) for e in data.train[:3]] == [LIMIT] * 3
    assert data.stats["train"]["tokens"] == sum(len(e["input_ids"]) for e in data.train)


def test_truncate_that_leaves_no_trained_token_drops_the_row(llama, tmp_path):
    rows = alpaca_rows(3)
    rows[0]["instruction"] = " ".join(COLORS * 10)  # the prompt alone is longer than sequence_len
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=LIMIT,
                   excess_length_strategy="truncate")
    assert data.stats["train"]["rows_dropped"] == {"no trained tokens": 1} and len(data.train) == 2


def test_all_rows_too_long_is_an_error_with_a_hint(llama, tmp_path):
    _, path = long_and_short(tmp_path, n_long=6)
    with pytest.raises(DataError) as info:
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], sequence_len=LIMIT)
    message = str(info.value)
    assert "no training examples left" in message and "6 rows read" in message
    assert f"longer than sequence_len ({LIMIT})" in message
    assert "raise sequence_len" in message and "excess_length_strategy: truncate" in message


# ── 5. validation split ────────────────────────────────────────────────────


def split(llama, path, **keys):
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}], **keys)
    return [tuple(e["input_ids"]) for e in data.train], [tuple(e["input_ids"]) for e in data.eval], data


@pytest.fixture
def forty(tmp_path):
    rows = [{"instruction": f"Task {i}.", "output": f"Answer {i}."} for i in range(40)]
    return write_jsonl(tmp_path / "forty.jsonl", rows)


def test_val_set_size_fraction_and_count(llama, forty):
    everything, _, _ = split(llama, forty)
    assert len(set(everything)) == 40
    train, held, data = split(llama, forty, val_set_size=0.25, seed=1)
    assert len(train) == 30 and len(held) == 10
    assert data.stats["train_examples"] == 30 and data.stats["eval_examples"] == 10
    assert not set(train) & set(held) and set(train) | set(held) == set(everything)
    assert train == [e for e in everything if e not in held], "training keeps the file order"
    train, held, _ = split(llama, forty, val_set_size=7, seed=1)
    assert len(train) == 33 and len(held) == 7 and not set(train) & set(held)
    _, held, _ = split(llama, forty, val_set_size=0.001)
    assert len(held) == 1, "a small fraction still holds out one example"


def test_val_set_size_is_deterministic_by_seed(llama, forty):
    first = split(llama, forty, val_set_size=0.25, seed=3)[1]
    assert split(llama, forty, val_set_size=0.25, seed=3)[1] == first
    assert set(split(llama, forty, val_set_size=0.25, seed=4)[1]) != set(first)


@pytest.mark.parametrize("size", [40, 55, 0.999])
def test_val_set_size_leaving_nothing_to_train_is_an_error(llama, forty, size):
    with pytest.raises(DataError, match=r"val_set_size .* leaves no training examples \(40 in all\)"):
        split(llama, forty, val_set_size=size)


def test_test_datasets_are_the_eval_set(llama, tmp_path, forty):
    test_rows = [{"instruction": f"Test {i}.", "output": f"Result {i}."} for i in range(5)]
    test_file = write_jsonl(tmp_path / "test.jsonl", test_rows)
    data = prepare(llama, datasets=[{"path": str(forty), "type": "alpaca"}],
                   test_datasets=[{"path": str(test_file), "type": "alpaca"}])
    assert len(data.train) == 40 and len(data.eval) == 5
    assert all(decode(llama, e["input_ids"]).count("### Instruction:\nTest ") == 1 for e in data.eval)
    assert data.stats["test"]["rows_read"] == 5 and data.stats["eval_examples"] == 5
    assert {Path(s.path).name for s in data.sources} == {"forty.jsonl", "test.jsonl"}


# ── 6. readers ─────────────────────────────────────────────────────────────

READER_ROWS = alpaca_rows(6, seed=5)
READER_ROWS[2]["input"] = ""  # an empty cell in csv


def write_as(path, rows, kind):
    path = Path(path)
    if kind == "jsonl":
        write_jsonl(path, rows)
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif kind == "json-lines":
        write_jsonl(path, rows)
    elif kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind in ("arrow", "arrow-stream"):
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        opener = pa.ipc.new_file if kind == "arrow" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def reference(llama, tmp_path):
    """READER_ROWS prepared from a plain .jsonl file: what every reader must give."""
    folder = tmp_path / "reference"
    folder.mkdir(exist_ok=True)
    path = write_jsonl(folder / "ref.jsonl", READER_ROWS)
    return prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}]).train


@pytest.mark.parametrize("kind,suffix", [("jsonl", ".jsonl"), ("json", ".json"), ("json-lines", ".json"),
                                         ("csv", ".csv"), ("parquet", ".parquet"), ("arrow", ".arrow"),
                                         ("arrow-stream", ".arrow")])
def test_readers_give_the_same_examples(llama, tmp_path, kind, suffix):
    path = write_as(tmp_path / f"data{suffix}", READER_ROWS, kind)
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])
    assert data.train == reference(llama, tmp_path)
    assert data.sources[0].path == str(path) and data.sources[0].rows == 6
    assert data.sources[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_and_a_data_files_glob(llama, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", READER_ROWS[:2])
    write_as(folder / "b.csv", READER_ROWS[2:4], "csv")
    write_as(folder / "sub" / "c.parquet", READER_ROWS[4:], "parquet")
    (folder / "notes.txt").write_text("not data")
    data = prepare(llama, datasets=[{"path": str(folder), "type": "alpaca"}])
    assert data.train == reference(llama, tmp_path)
    names = [Path(s.path).relative_to(folder).as_posix() for s in data.sources]
    assert names == ["a.jsonl", "b.csv", "sub/c.parquet"]
    for source in data.sources:
        assert source.sha256 == hashlib.sha256(Path(source.path).read_bytes()).hexdigest() and source.rows == 2

    globbed = prepare(llama, datasets=[{"path": str(folder), "type": "alpaca", "data_files": "*.jsonl"}])
    assert [Path(s.path).name for s in globbed.sources] == ["a.jsonl"] and len(globbed.train) == 2
    listed = prepare(llama, datasets=[{"path": str(folder), "type": "alpaca", "data_files": ["b.csv", "sub/*"]}])
    assert [Path(s.path).name for s in listed.sources] == ["b.csv", "c.parquet"] and len(listed.train) == 4
    with pytest.raises(DataError, match=r"data_files .* matched no file"):
        prepare(llama, datasets=[{"path": str(folder), "type": "alpaca", "data_files": "*.arrow"}])


def test_sha256_changes_with_the_bytes(llama, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", READER_ROWS)
    before = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}]).sources[0].sha256
    write_jsonl(path, READER_ROWS[:-1])
    after = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}]).sources[0].sha256
    assert before != after and after == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_row_numbers_count_the_header_line(llama, tmp_path):
    rows = [dict(r) for r in READER_ROWS]
    rows[3]["output"] = ""  # an empty cell: missing
    path = write_as(tmp_path / "data.csv", rows, "csv")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 5: missing field 'output'"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


def test_csv_cells_are_text(llama, tmp_path):
    rows = [{"instruction": "Pad to three digits.", "input": "7", "output": "007"},
            {"instruction": "Say NA.", "input": "", "output": "NA"},
            {"instruction": "Add.", "input": "1 + 2", "output": "3"}]
    path = write_as(tmp_path / "numbers.csv", rows, "csv")
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])
    assert [trained_text(llama, e) for e in data.train] == ["007<|eot_id|>", "NA<|eot_id|>", "3<|eot_id|>"]


def test_parquet_row_numbers(llama, tmp_path):
    rows = [dict(r) for r in READER_ROWS]
    rows[2]["output"] = None
    path = write_as(tmp_path / "data.parquet", rows, "parquet")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 3: missing field 'output'"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


def test_json_list_row_numbers_and_a_single_object(llama, tmp_path):
    rows = [dict(r) for r in READER_ROWS]
    rows[4] = ["not", "an", "object"]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 5: expected a JSON object, got list"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])
    # one JSON object is one row, even when its only value is a list (a chat row: {"messages": [...]})
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}), encoding="utf-8")
    data = prepare(llama, datasets=[{"path": str(path), "type": "chat_template"}], chat_template="llama3")
    assert data.stats["train"]["rows_kept"] == 1


def test_json_lines_named_json_with_a_bad_line(llama, tmp_path):
    path = write_lines(tmp_path / "data.json", [GOOD_ALPACA, GOOD_ALPACA, '{"instruction": }'])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 3: malformed JSON"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


@pytest.mark.parametrize("lines", [[b'[{"instruction": "caf\xe9", "output": "x"}]'],
                                   [GOOD_ALPACA.encode(), GOOD_ALPACA.encode(), b'{"instruction": "\xff"}']],
                         ids=["json", "json-lines"])
def test_undecodable_json_file_names_the_line(llama, tmp_path, lines):
    path = write_lines(tmp_path / "data.json", lines)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: (row|line) {len(lines)}: .*not valid UTF-8"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


def test_undecodable_csv_names_the_line(llama, tmp_path):
    path = write_lines(tmp_path / "data.csv", [b"instruction,output", b"Say it,ok", b"Say it,caf\xe9"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 3: not valid UTF-8"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


@pytest.mark.parametrize("kind,suffix", [("jsonl", ".jsonl"), ("json", ".json"), ("csv", ".csv")])
def test_a_utf8_byte_order_mark_is_ignored(llama, tmp_path, kind, suffix):
    path = write_as(tmp_path / f"data{suffix}", READER_ROWS, kind)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows tools write it
    assert prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}]).train == reference(llama, tmp_path)


def test_malformed_json_document_names_line_and_column(llama, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "x", "output": "y"},\n  {"instruction": oops}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: malformed JSON: .* line 3, column 19"):
        prepare(llama, datasets=[{"path": str(path), "type": "alpaca"}])


def test_missing_and_unreadable_sources(llama, tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        prepare(llama, datasets=[{"path": str(tmp_path / "nope.jsonl"), "type": "alpaca"}])
    (tmp_path / "data.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"cannot tell the file format from '\.txt'"):
        prepare(llama, datasets=[{"path": str(tmp_path / "data.txt"), "type": "alpaca"}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder holds no"):
        prepare(llama, datasets=[{"path": str(tmp_path / "empty"), "type": "alpaca"}])


def test_ds_type_reads_an_unusual_suffix(llama, tmp_path):
    path = write_jsonl(tmp_path / "data.txt", READER_ROWS)
    data = prepare(llama, datasets=[{"path": str(path), "type": "alpaca", "ds_type": "json"}])
    assert data.train == reference(llama, tmp_path)


def test_several_datasets_in_one_run(llama, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    c = write_jsonl(tmp_path / "c.jsonl", chat_rows(4))
    data = prepare(llama, datasets=[{"path": str(a), "type": "alpaca"}, {"path": str(c), "type": "chat_template"}],
                   chat_template="llama3")
    assert len(data.train) == 7 and data.stats["train"]["rows_read"] == 7
    assert [Path(s.path).name for s in data.sources] == ["a.jsonl", "c.jsonl"]


# ── 7. the alpaca format ───────────────────────────────────────────────────


def alpaca_example(tokenizer, row, **options):
    return format_one(tokenizer, row, "alpaca", **options)


def test_alpaca_prompt_with_input(llama):
    example = alpaca_example(llama, {"instruction": "Reverse the words.", "input": "red green", "output": "green red"})
    assert decode(llama, example["input_ids"]) == (
        "<|begin_of_text|>Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nReverse the words.\n\n### Input:\nred green\n\n### Response:\ngreen red<|eot_id|>")
    assert trained_runs(llama, example) == ["green red<|eot_id|>"]


@pytest.mark.parametrize("row", [{"instruction": "Name a color.", "output": "red"},
                                 {"instruction": "Name a color.", "input": "", "output": "red"},
                                 {"instruction": "Name a color.", "input": None, "output": "red"}],
                         ids=["absent", "empty", "null"])
def test_alpaca_prompt_without_input(llama, row):
    example = alpaca_example(llama, row)
    assert decode(llama, example["input_ids"]) == (
        "<|begin_of_text|>Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\nred<|eot_id|>")
    assert trained_runs(llama, example) == ["red<|eot_id|>"]


def test_alpaca_field_remapping(llama):
    row = {"question": "Reverse the words.", "context": "red green", "answer": "green red", "instruction": "ignored"}
    example = alpaca_example(llama, row, field_instruction="question", field_input="context", field_output="answer")
    text = decode(llama, example["input_ids"])
    assert "### Instruction:\nReverse the words.\n\n### Input:\nred green\n\n### Response:\ngreen red" in text
    assert "ignored" not in text
    assert trained_runs(llama, example) == ["green red<|eot_id|>"]
    with pytest.raises(ValueError, match="missing field 'answer'"):
        alpaca_example(llama, {"instruction": "x", "output": "y"}, field_output="answer")


def test_alpaca_system_prompt_and_system_field(llama):
    row = {"instruction": "Name a color.", "output": "red"}
    example = alpaca_example(llama, row, system_prompt="You name colors.")
    assert decode(llama, example["input_ids"]) == (
        "<|begin_of_text|>You name colors.\n\n### Instruction:\nName a color.\n\n### Response:\nred<|eot_id|>")
    example = alpaca_example(llama, {**row, "sys": "Per row."}, system_prompt="Default.", field_system="sys")
    assert decode(llama, example["input_ids"]).startswith("<|begin_of_text|>Per row.\n\n### Instruction:")
    assert trained_runs(llama, example) == ["red<|eot_id|>"]


def test_alpaca_train_on_inputs(llama, qwen):
    row = {"instruction": "Name a color.", "output": "red"}
    for tokenizer, bos in ((llama, True), (qwen, False)):
        example = alpaca_example(tokenizer, row, train_on_inputs=True)
        start = 1 if bos else 0
        assert example["labels"][:start] == [IGNORE_INDEX] * start
        assert example["labels"][start:] == example["input_ids"][start:]
    example = alpaca_example(qwen, row)
    assert decode(qwen, example["input_ids"]).endswith("### Response:\nred<|im_end|>")
    assert trained_runs(qwen, example) == ["red<|im_end|>"]


def test_alpaca_unknown_option_is_a_recipe_error():
    from ftcore.errors import RecipeError

    with pytest.raises(RecipeError, match=r"datasets\[0\]\.field_instructions: unknown key.*field_instruction"):
        make_recipe(datasets=[{"path": "x.jsonl", "type": "alpaca", "field_instructions": "q"}])


def test_completion_field_and_eos(llama, qwen):
    row = {"body": "  red green\n"}
    example = format_one(llama, row, "completion", field="body")
    assert example["input_ids"][0] == llama.bos_token_id and example["labels"][0] == IGNORE_INDEX
    assert trained_text(llama, example) == "  red green\n<|eot_id|>"
    example = format_one(qwen, row, "completion", field="body")
    assert trained_text(qwen, example) == "  red green\n<|im_end|>" and example["labels"] == example["input_ids"]


def test_ds_type_text_reads_each_line_as_a_completion(llama, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line of text\n\nsecond line\n", encoding="utf-8")
    data = prepare(llama, datasets=[{"path": str(path), "type": "completion", "ds_type": "text"}])
    texts = [llama.decode(e["input_ids"], skip_special_tokens=True) for e in data.train]
    assert texts == ["first line of text", "second line"]


def test_default_system_message_is_added_when_a_conversation_has_none(llama):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]}]
    texts = []
    for row in rows:
        example = format_one(llama, row, "chat_template", chat_template="llama3",
                             recipe_keys={"default_system_message": "You are kind."})
        texts.append(llama.decode(example["input_ids"]))
        trained = llama.decode([t for t in example["labels"] if t != IGNORE_INDEX])
        assert trained == "hello<|eot_id|>"
    assert "<|start_header_id|>system<|end_header_id|>\n\nYou are kind.<|eot_id|>" in texts[0]
    assert "You are kind." not in texts[1] and "Be terse." in texts[1]


def test_a_per_dataset_chat_template_must_match_the_recipes():
    from ftcore.errors import RecipeError

    ok = make_recipe(chat_template="llama3",
                     datasets=[{"path": "x.jsonl", "type": "chat_template", "chat_template": "llama3"}])
    assert ok.datasets[0].options.chat_template == "llama3"
    with pytest.raises(RecipeError) as info:
        make_recipe(chat_template="llama3",
                    datasets=[{"path": "x.jsonl", "type": "chat_template", "chat_template": "chatml"}])
    assert [k for k, _ in info.value.problems] == ["datasets[0].chat_template"]
