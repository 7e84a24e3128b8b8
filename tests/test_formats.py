"""The formats and templates beyond alpaca / completion / chat_template, one by one.

``sharegpt``, ``input_output``, ``pretrain``, a dotted-path user function, the
``qwen_25`` and ``llama3_2_vision`` templates, and tokens added by the recipe
under LoRA. The mask property over every format and template is in
``test_data.py`` (``test_mask_property``); this file checks each format's own
rules, its bad rows, and what is not a per-row mask (pretrain's chunks).
"""

import json
import random
import re
import textwrap

import pytest
from conftest import write_jsonl, write_recipe
from test_data import (CONVERSATION, FORMATS, TEMPLATES, decode, format_one, make_recipe, prepare,
                       random_text, trained_runs, trained_text)

from ftcore.data import IGNORE_INDEX
from ftcore.data.prepare import set_chat_template
from ftcore.errors import DataError, FtcoreError, RecipeError

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def sharegpt_turns(messages, names=None):
    names = names or {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]


# ── sharegpt ────────────────────────────────────────────────────────────────


def test_sharegpt_trains_the_gpt_turns_and_their_end_of_turn(llama, qwen):
    row = {"conversations": sharegpt_turns(CONVERSATION)}
    example = format_one(llama, row, "sharegpt", chat_template="llama3")
    assert trained_runs(llama, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]
    text = decode(llama, example["input_ids"])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert "<|start_header_id|>user<|end_header_id|>\n\nHello" in text and "human" not in text
    example = format_one(qwen, row, "sharegpt", chat_template="qwen_25")
    assert trained_runs(qwen, example) == ["Hi there<|im_end|>", "Red<|im_end|>"]


def test_sharegpt_is_chat_template_with_other_defaults(llama):
    """One implementation: the same conversation gives the same example either way."""
    (sharegpt, _), _ = FORMATS["sharegpt"]
    (chat, _), _ = FORMATS["chat_template"]
    assert sharegpt is chat
    row = {"conversations": sharegpt_turns(CONVERSATION)}
    as_sharegpt = format_one(llama, row, "sharegpt", chat_template="llama3", train_on_eos="last")
    as_chat = format_one(llama, row, "chat_template", chat_template="llama3", train_on_eos="last",
                         field_messages="conversations", message_property_mappings={"role": "from", "content": "value"})
    assert as_sharegpt == as_chat


def test_sharegpt_roles_mapping_and_axolotls_older_input_output_names(llama):
    names = {"system": "system", "user": "prompter", "assistant": "bot"}
    row = {"conversations": sharegpt_turns(CONVERSATION, names)}
    for roles in ({"system": ["system"], "user": ["prompter"], "assistant": ["bot"]},
                  {"system": ["system"], "input": ["prompter"], "output": ["bot"]}):
        example = format_one(llama, row, "sharegpt", chat_template="llama3", roles=roles)
        assert trained_runs(llama, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]
        assert "<|start_header_id|>assistant<|end_header_id|>\n\nRed" in decode(llama, example["input_ids"])
    with pytest.raises(ValueError, match="message 1: unknown role 'prompter'; known: .*gpt, human"):
        format_one(llama, row, "sharegpt", chat_template="llama3")


def test_sharegpt_field_names_are_options(llama):
    row = {"dialog": [{"speaker": "human", "text": "Hello"}, {"speaker": "gpt", "text": "Hi there", "ok": False},
                      {"speaker": "human", "text": "Color?"}, {"speaker": "gpt", "text": "Red"}]}
    example = format_one(llama, row, "sharegpt", chat_template="llama3", field_messages="dialog",
                         message_property_mappings={"role": "speaker", "content": "text"}, message_field_training="ok")
    assert trained_runs(llama, example) == ["Red<|eot_id|>"]
    # one mapping given: the other key keeps ShareGPT's default
    row = {"conversations": [{"who": "human", "value": "Hello"}, {"who": "gpt", "value": "Hi"}]}
    example = format_one(llama, row, "sharegpt", chat_template="llama3", message_property_mappings={"role": "who"})
    assert trained_runs(llama, example) == ["Hi<|eot_id|>"]


@pytest.mark.parametrize("line,reason", [
    ({"messages": [{"from": "human", "value": "x"}]}, "missing field 'conversations'"),
    ({"conversations": [{"role": "user", "content": "x"}]}, "message 0: missing field 'from'"),
    ({"conversations": [{"from": "human", "text": "x"}]}, "message 0: missing field 'value'"),
    ({"conversations": []}, "empty conversation"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown role 'robot'"),
])
def test_sharegpt_bad_rows_name_file_and_row(llama, tmp_path, line, reason):
    good = {"conversations": sharegpt_turns(CONVERSATION)}
    path = write_jsonl(tmp_path / "conv.jsonl", [good, line])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 2: .*{re.escape(reason)}"):
        prepare(llama, datasets=[{"path": str(path), "type": "sharegpt"}], chat_template="llama3")


def test_sharegpt_per_dataset_chat_template_must_match_the_recipes():
    with pytest.raises(RecipeError) as info:
        make_recipe(chat_template="llama3",
                    datasets=[{"path": "x.jsonl", "type": "sharegpt", "chat_template": "chatml"}])
    assert [k for k, _ in info.value.problems] == ["datasets[0].chat_template"]


# ── input_output ────────────────────────────────────────────────────────────

QA = [{"text": "Q: red or blue?\n", "label": False}, {"text": "A: red", "label": True},
      {"text": "<|eot_id|>", "label": True}, {"text": "\nignored tail", "label": False}]


def test_input_output_labels_exactly_the_labelled_segments(llama):
    example = format_one(llama, {"segments": QA}, "input_output")
    pieces = [llama(s["text"], add_special_tokens=False)["input_ids"] for s in QA]
    assert example["input_ids"] == [llama.bos_token_id] + pieces[0] + pieces[1] + pieces[2] + pieces[3]
    assert example["labels"] == ([IGNORE_INDEX] * (1 + len(pieces[0])) + pieces[1] + pieces[2]
                                 + [IGNORE_INDEX] * len(pieces[3]))
    assert trained_runs(llama, example) == ["A: red<|eot_id|>"]


def test_input_output_bos_comes_from_the_tokenizer_only(llama, qwen):
    segments = [{"text": "red", "label": False}, {"text": " green", "label": True}]
    example = format_one(llama, {"segments": segments}, "input_output")
    assert example["input_ids"][0] == llama.bos_token_id and example["input_ids"].count(llama.bos_token_id) == 1
    assert llama.eos_token_id not in example["input_ids"], "no EOS unless the text has it"
    # the text already starts with BOS: no second one, and it is not trained
    written = [{"text": "<|begin_of_text|>red", "label": True}, {"text": " green", "label": True}]
    example = format_one(llama, {"segments": written}, "input_output")
    assert example["input_ids"].count(llama.bos_token_id) == 1 and example["labels"][0] == IGNORE_INDEX
    assert trained_text(llama, example) == "red green"
    example = format_one(qwen, {"segments": segments}, "input_output")
    assert example["input_ids"] == qwen("red green")["input_ids"], "Qwen: no BOS, nothing added"
    assert trained_text(qwen, example) == " green"


def test_input_output_a_boundary_is_a_token_boundary(qwen):
    # "gre" + "en" would be one token if tokenized together; apart, each segment keeps its own tokens
    example = format_one(qwen, {"segments": [{"text": "red gre", "label": False}, {"text": "en", "label": True}]},
                         "input_output")
    assert trained_text(qwen, example) == "en"


def test_input_output_ignores_train_on_inputs_and_takes_field_segments(llama):
    masked = format_one(llama, {"segments": QA}, "input_output")
    assert format_one(llama, {"segments": QA}, "input_output", train_on_inputs=True) == masked
    assert format_one(llama, {"parts": QA}, "input_output", field_segments="parts") == masked


@pytest.mark.parametrize("row,reason", [
    ({"text": "x"}, "missing field 'segments'"),
    ({"segments": "x"}, "field 'segments' must be a list of segments, got str"),
    ({"segments": []}, "field 'segments' is empty"),
    ({"segments": ["x"]}, "segment 0 must be an object with text and label, got str"),
    ({"segments": [{"text": "x"}]}, "segment 0: missing field 'label'"),
    ({"segments": [{"label": True}]}, "segment 0: missing field 'text'"),
    ({"segments": [{"text": "x", "label": "yes"}]}, "segment 0: field 'label' must be true or false, got 'yes'"),
    ({"segments": [{"text": 3, "label": True}]}, "segment 0: field 'text' must be a string, got int"),
    ({"segments": [{"text": "", "label": True}]}, "every segment is empty"),
])
def test_input_output_bad_rows(llama, tmp_path, row, reason):
    path = write_jsonl(tmp_path / "io.jsonl", [{"segments": QA}, row])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 2: {re.escape(reason)}"):
        prepare(llama, datasets=[{"path": str(path), "type": "input_output"}])


def test_input_output_rows_without_a_trained_segment_are_dropped(llama, tmp_path):
    path = write_jsonl(tmp_path / "io.jsonl", [{"segments": QA}, {"segments": [{"text": "x y", "label": False}]}])
    data = prepare(llama, datasets=[{"path": str(path), "type": "input_output"}])
    assert data.stats["train"]["rows_dropped"] == {"no trained tokens": 1} and len(data.train) == 1


# ── pretrain ────────────────────────────────────────────────────────────────


def documents(n, seed):
    r = random.Random(seed)
    return [random_text(r) + " " + random_text(r) for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "qwen"])
@pytest.mark.parametrize("sequence_len", [16, 37, 64])
def test_pretrain_chunks_are_the_documents_joined_by_eos(tokenizers, tmp_path, family, sequence_len):
    tokenizer = tokenizers[family]
    docs = [d for d in documents(60, f"{family}-{sequence_len}") if d.strip()]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    data = prepare(tokenizer, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=sequence_len)
    chunks = data.train
    lengths = [len(c["input_ids"]) for c in chunks]
    assert all(n == sequence_len for n in lengths[:-1]) and 0 < lengths[-1] <= sequence_len
    stream = []
    for doc in docs:  # each document as the tokenizer encodes it (Llama: BOS first), then EOS
        stream += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for c in chunks for t in c["input_ids"]] == stream, "nothing lost, nothing added, order kept"
    assert stream.count(tokenizer.eos_token_id) == len(docs)
    bos = tokenizer.bos_token_id
    if family == "llama":
        assert stream.count(bos) == len(docs), "one BOS per document, as the tokenizer puts it"
    else:
        assert bos is None, "Qwen: no BOS anywhere"
    for chunk in chunks:  # every token trains but BOS
        assert chunk["labels"] == [IGNORE_INDEX if t == bos else t for t in chunk["input_ids"]]
    stats = data.stats["train"]
    assert stats["rows_read"] == stats["rows_kept"] == len(docs) and stats["rows_dropped"] == {}
    assert data.stats["train_examples"] == len(chunks) == -(-len(stream) // sequence_len)
    assert stats["tokens"] == len(stream)


def test_pretrain_keeps_a_short_dataset_and_names_chunks_after_their_first_row(llama, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "red green"}, {"body": "blue"}])
    data = prepare(llama, datasets=[{"path": str(path), "type": "pretrain", "field": "body"}], sequence_len=64)
    assert len(data.train) == 1
    assert decode(llama, data.train[0]["input_ids"]) == (
        "<|begin_of_text|>red green<|eot_id|><|begin_of_text|>blue<|eot_id|>")
    rows = [{"text": " ".join(["red green blue"] * (i + 1))} for i in range(6)]
    path = write_jsonl(tmp_path / "more.jsonl", rows)
    data = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=8)
    offsets, starts = 0, []
    for i, row in enumerate(rows, start=1):
        starts.append((offsets, i))
        offsets += len(llama(row["text"])["input_ids"]) + 1
    for k, origin in enumerate(data.origins):
        assert origin == (str(path), max(row for start, row in starts if start <= 8 * k))


def test_pretrain_dataset_entries_never_share_a_chunk(llama, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "red green blue"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "black white"}])
    data = prepare(llama, datasets=[{"path": str(a), "type": "pretrain"}, {"path": str(b), "type": "pretrain"}],
                   sequence_len=64)
    assert [decode(llama, c["input_ids"]) for c in data.train] == [
        "<|begin_of_text|>red green blue<|eot_id|>", "<|begin_of_text|>black white<|eot_id|>"]


def test_pretrain_bad_rows_and_skip(llama, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "red green"}, {"text": "  "}, {"txt": "x"}, {"text": "blue"}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 2: field 'text' is empty"):
        prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}])
    data = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], on_invalid_example="skip")
    assert data.stats["train"]["rows_dropped"] == {"empty text": 1, "missing field": 1}
    assert data.stats["train"]["rows_kept"] == 2
    assert decode(llama, data.train[0]["input_ids"]) == (
        "<|begin_of_text|>red green<|eot_id|><|begin_of_text|>blue<|eot_id|>")


def test_pretrain_in_worker_processes_gives_the_same_chunks(llama, tmp_path, monkeypatch):
    from ftcore.data import prepare as prepare_module

    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in documents(300, "workers") if d.strip()])
    one = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=32)
    monkeypatch.setattr(prepare_module, "PARALLEL_MIN_ROWS", 10)
    monkeypatch.setattr(prepare_module, "CHUNK_ROWS", 16)
    two = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=32, dataset_processes=2)
    assert two.train == one.train and two.origins == one.origins


def test_pretrain_with_a_validation_split(llama, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in documents(80, "split") if d.strip()])
    data = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=32, val_set_size=0.25)
    whole = prepare(llama, datasets=[{"path": str(path), "type": "pretrain"}], sequence_len=32)
    assert len(data.train) + len(data.eval) == len(whole.train) and data.eval


# ── a user function by dotted path ─────────────────────────────────────────

USER_MODULE = '''
from ftcore.data import RowError

CONSTANT = 3


def qa(row, dataset, ctx):
    """A user format: a prefix from the dataset entry, the question untrained, the answer trained."""
    if "q" not in row:
        raise RowError("no question", "missing field")
    return [(dataset.options.prefix + row["q"] + "\\n", False), (row["a"], True), (ctx.eos_token, True)]


def tokens(row, dataset, ctx):
    ids = ctx.tokenizer(row["a"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [0] + ids, "labels": [-100] + ids}
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_formats.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    (folder / "broken_formats.py").write_text("x = 1 / 0\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_dotted_path_user_function_with_its_options(llama, tmp_path, user_module):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Color?", "a": "red"}, {"q": "Sky?", "a": "blue"}])
    entry = {"path": str(path), "type": "my_formats.qa", "prefix": "Q: "}
    data = prepare(llama, datasets=[entry])
    assert [decode(llama, e["input_ids"]) for e in data.train] == [
        "<|begin_of_text|>Q: Color?\nred<|eot_id|>", "<|begin_of_text|>Q: Sky?\nblue<|eot_id|>"]
    assert [trained_text(llama, e) for e in data.train] == ["red<|eot_id|>", "blue<|eot_id|>"]
    recipe = make_recipe(datasets=[entry])
    assert recipe.datasets[0].options.prefix == "Q: " and dict(recipe.datasets[0].options) == {"prefix": "Q: "}
    assert recipe.to_yaml_dict()["datasets"][0] == {"path": str(path), "type": "my_formats.qa", "prefix": "Q: "}
    # a user function may return tokens too, and its RowError names file and row like any format's
    assert prepare(llama, datasets=[{"path": str(path), "type": "my_formats.tokens"}]).train[0]["labels"][0] == -100
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"q": "x", "a": "y"}, {"a": "y"}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: row 2: no question"):
        prepare(llama, datasets=[{**entry, "path": str(bad)}])


@pytest.mark.parametrize("type,message", [
    ("no_such_module.qa", "cannot import module 'no_such_module' for 'no_such_module.qa': ModuleNotFoundError"),
    ("my_formats.nope", "module 'my_formats' has no attribute 'nope'"),
    ("my_formats.CONSTANT", "'my_formats.CONSTANT' is a int, not a callable function(row, dataset, ctx)"),
    ("broken_formats.fn", "cannot import module 'broken_formats' for 'broken_formats.fn': ZeroDivisionError"),
])
def test_a_dotted_path_that_fails_is_a_recipe_error_naming_the_key(user_module, type, message):
    with pytest.raises(RecipeError) as info:
        make_recipe(datasets=[{"path": "x.jsonl", "type": "alpaca"}, {"path": "y.jsonl", "type": type}])
    (key, text), = info.value.problems
    assert key == "datasets[1].type" and message in text


def test_a_registered_name_wins_and_an_unknown_plain_name_mentions_dotted_paths():
    assert make_recipe(datasets=[{"path": "x.jsonl", "type": "pretrain"}]).datasets[0].options.field == "text"
    with pytest.raises(RecipeError) as info:
        make_recipe(datasets=[{"path": "x.jsonl", "type": "sharegtp"}])
    (key, text), = info.value.problems
    assert key == "datasets[0].type" and "did you mean 'sharegpt'" in text and "module.function" in text


# ── templates: qwen_25 and llama3_2_vision ──────────────────────────────────


def test_qwen_25_adds_its_default_system_prompt_only_when_there_is_none(qwen):
    without = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    example = format_one(qwen, {"messages": without}, "chat_template", chat_template="qwen_25")
    assert decode(qwen, example["input_ids"]) == (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n")
    assert trained_runs(qwen, example) == ["Hello<|im_end|>"]
    with_system = [{"role": "system", "content": "Be brief."}] + without
    example = format_one(qwen, {"messages": with_system}, "chat_template", chat_template="qwen_25")
    text = decode(qwen, example["input_ids"])
    assert QWEN_SYSTEM not in text and text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # the recipe's default_system_message is the conversation's own: Qwen's default then stays out
    example = format_one(qwen, {"messages": without}, "chat_template", chat_template="qwen_25",
                         recipe_keys={"default_system_message": "Answer in French."})
    text = decode(qwen, example["input_ids"])
    assert QWEN_SYSTEM not in text and "<|im_start|>system\nAnswer in French.<|im_end|>" in text
    assert qwen.apply_chat_template(without[:1], chat_template=TEMPLATES["qwen_25"][0], tokenize=False,
                                    add_generation_prompt=True).endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                        "<|im_start|>assistant\n")


def test_qwen_25_tool_results_and_the_eos_and_pad_of_qwen(qwen):
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Calling."},
                {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    example = format_one(qwen, {"messages": messages}, "chat_template", chat_template="qwen_25")
    text = decode(qwen, example["input_ids"])
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n" in text
    assert trained_runs(qwen, example) == ["Calling.<|im_end|>", "It is sunny.<|im_end|>"]
    assert qwen.bos_token is None and qwen.pad_token == "<|endoftext|>" and qwen.eos_token == "<|im_end|>"


def test_llama3_2_vision_text_rows_render_as_llama3_with_one_bos(llama_vision):
    example = format_one(llama_vision, {"messages": CONVERSATION}, "chat_template", chat_template="llama3_2_vision")
    plain = format_one(llama_vision, {"messages": CONVERSATION}, "chat_template", chat_template="llama3")
    assert example == plain
    assert example["input_ids"].count(llama_vision.bos_token_id) == 1
    assert trained_runs(llama_vision, example) == ["Hi there<|eot_id|>", "Red<|eot_id|>"]


def test_llama3_2_vision_renders_an_image_token_per_image_part(llama_vision):
    template = TEMPLATES["llama3_2_vision"][0]
    messages = [{"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "image", "url": "b"},
                                             {"type": "text", "text": "Same color?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]
    text = llama_vision.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|><|image|>Same color?"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nYes.<|eot_id|>")
    for i in range(1, len(messages)):  # turn by turn: each prefix renders as a prefix of the whole
        assert text.startswith(llama_vision.apply_chat_template(messages[:i], chat_template=template, tokenize=False))
    ids = llama_vision(text, add_special_tokens=False)["input_ids"]
    assert ids.count(llama_vision.convert_tokens_to_ids("<|image|>")) == 2


# ── content parts (register_content_parts) ─────────────────────────────────

STAND_IN = "<|reserved_special_token_0|>"  # a special token of the tiny Llama 3 tokenizer


def audio_handler(seen):
    """A throwaway handler of ``audio`` parts, as a plugin registers it: the part's text, extras in ``finish``."""
    from ftcore.api import ContentPart, ContentRow

    def audio(part):
        assert isinstance(part, ContentPart) and isinstance(part.row, ContentRow)
        seen.append((part.type, part.data, part.message, part.where))
        return STAND_IN

    def finish(row):
        seen.append(("finish", [m["content"] for m in row.messages]))
        if row.parts.get("audio"):
            row.extras["clips"] = [part.data["path"] for part in row.parts["audio"]]

    audio.finish = finish
    return audio


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_a_content_part_becomes_its_handlers_text_never_trained_and_its_extras(llama, train_on_inputs):
    from ftcore.api import FormatContext
    from ftcore.data.prepare import format_row

    seen = []
    recipe = make_recipe(datasets=[{"path": "unused.jsonl", "type": "chat_template"}], chat_template="llama3",
                         train_on_inputs=train_on_inputs)
    ctx = FormatContext(tokenizer=llama, recipe=recipe, chat_template=set_chat_template(recipe, llama, TEMPLATES),
                        parts={"audio": (audio_handler(seen), "listener")})
    (function, _), _ = FORMATS["chat_template"]
    row = {"messages": [{"role": "user", "content": "What do you hear?"},
                        {"role": "assistant", "content": [{"type": "text", "text": "Listen:"},
                                                          {"type": "audio", "path": "a.wav"}]}]}
    example = format_row(row, recipe.datasets[0], function, ctx)
    assert seen == [("audio", {"type": "audio", "path": "a.wav"}, 1, "message 1"),
                    ("finish", ["What do you hear?", f"Listen:{STAND_IN}"])]
    assert example["clips"] == ["a.wav"]  # the handler's extras ride with the example
    stand_in = llama.convert_tokens_to_ids(STAND_IN)
    at = example["input_ids"].index(stand_in)
    assert example["labels"][at] == IGNORE_INDEX  # the text standing for a part never trains
    assert "Listen:" in trained_text(llama, example) and STAND_IN not in trained_text(llama, example)
    text_only = format_row({"messages": CONVERSATION}, recipe.datasets[0], function, ctx)
    assert set(text_only) == {"input_ids", "labels"}  # no parts, no extras


def test_a_part_no_plugin_handles_is_a_bad_row_naming_its_type(llama):
    row = {"messages": [{"role": "user", "content": [{"type": "audio", "path": "a.wav"}]},
                        {"role": "assistant", "content": "Rain."}]}
    with pytest.raises(ValueError, match=r"message 0: unsupported content part \{'type': 'audio', 'path': 'a.wav'\}: "
                                         r"no installed plugin handles 'audio' parts"):
        format_one(llama, row, "chat_template", chat_template="llama3")
    column = {"images": ["a.png"], "messages": CONVERSATION}
    with pytest.raises(ValueError, match="field 'images' holds image parts, but no installed plugin handles 'image'"):
        format_one(llama, column, "chat_template", chat_template="llama3")
    assert format_one(llama, {**column, "images": []}, "chat_template", chat_template="llama3")  # none given: fine


def test_templates_name_the_special_tokens_a_tokenizer_lacks(llama, qwen):
    with pytest.raises(FtcoreError, match=r"chat_template: llama3_2_vision uses tokens the tokenizer lacks: <\|image\|>"):
        set_chat_template(make_recipe(chat_template="llama3_2_vision"), llama, TEMPLATES)
    with pytest.raises(FtcoreError, match=r"qwen_25 uses tokens the tokenizer lacks: <\|im_end\|>, <\|im_start\|>"):
        set_chat_template(make_recipe(chat_template="qwen_25"), llama, TEMPLATES)
    assert set_chat_template(make_recipe(chat_template="qwen_25"), qwen, TEMPLATES) == TEMPLATES["qwen_25"][0]


# ── tokens added by the recipe ─────────────────────────────────────────────


def test_load_tokenizer_records_only_the_tokens_new_to_the_vocabulary(tiny_llama):
    from ftcore.api import NEW_TOKENS, Stash
    from ftcore.plugins.huggingface import load_tokenizer

    stash, plain = Stash(), Stash()
    load_tokenizer(make_recipe(base_model=str(tiny_llama), tokens=["<|new_token|>", "<|eot_id|>"],
                               special_tokens={"pad_token": "<|end_of_text|>"}), stash)
    assert stash[NEW_TOKENS] == ["<|new_token|>"]
    load_tokenizer(make_recipe(base_model=str(tiny_llama)), plain)
    assert plain[NEW_TOKENS] == []


def test_lora_trains_and_saves_the_embeddings_when_the_recipe_adds_tokens(tiny_llama, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from test_run import logits, run_recipe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"segments": [{"text": f"Say the token {i}:", "label": False},
                          {"text": " <|new_token|> red<|eot_id|>", "label": True}]} for i in range(16)]
    data = write_jsonl(tmp_path / "io.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), adapter="lora",
                          lora_target_modules=["q_proj", "v_proj"], tokens=["<|new_token|>"],
                          datasets=[{"path": str(data), "type": "input_output"}], sequence_len=64,
                          micro_batch_size=4, max_steps=3, learning_rate=1e-2, output_dir=str(tmp_path / "out"))
    result = run_recipe(recipe)
    assert "embed_tokens and lm_head train in full and are saved with the adapter" in capsys.readouterr().out
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)

    out = result.output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["modules_to_save"]) == {"embed_tokens", "lm_head"}
    saved = load_file(out / "adapter_model.safetensors")
    new_id = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|new_token|>")
    base = load_file(tiny_llama / "model.safetensors")
    embed = next(k for k in saved if k.endswith("embed_tokens.weight"))
    head = next(k for k in saved if k.endswith("lm_head.weight"))
    assert not torch.equal(saved[embed][new_id], base["model.embed_tokens.weight"][new_id]), "the new row learned"
    assert not torch.equal(saved[head][new_id], base["lm_head.weight"][new_id])

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), out)
    ids = torch.tensor([[0, new_id, 5]])
    torch.testing.assert_close(logits(reloaded, ids), logits(result.model, ids), rtol=0, atol=1e-5)


def test_lora_leaves_the_embeddings_alone_without_new_tokens_and_keeps_tied_ones_tied(tiny_llama, capsys):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ftcore.api import NEW_TOKEN_IDS, Stash
    from ftcore.log import console
    from ftcore.plugins.lora import lora_config

    recipe = make_recipe(adapter="lora", lora_target_modules=["q_proj"])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with console():  # the plugin's notices on stdout, as during a run
        assert lora_config(recipe, model, Stash()).modules_to_save is None and "notice" not in capsys.readouterr().out
        listed = make_recipe(adapter="lora", lora_target_modules=["q_proj"], lora_modules_to_save=["lm_head"])
        added = Stash()
        added[NEW_TOKEN_IDS] = [3]
        assert lora_config(listed, model, added).modules_to_save == ["lm_head", "embed_tokens"]
        assert "embed_tokens train in full" in capsys.readouterr().out

    tied = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    added = Stash()
    added[NEW_TOKEN_IDS] = [60]
    peft_model = get_peft_model(tied, lora_config(recipe, tied, added))
    embed, head = peft_model.get_input_embeddings(), peft_model.get_output_embeddings()
    assert embed.modules_to_save["default"].weight is head.modules_to_save["default"].weight
    assert embed.modules_to_save["default"].weight.requires_grad


@pytest.mark.parametrize("with_input", [True, False])
def test_alpaca_with_a_chat_template_trains_the_reply_and_end_of_turn(llama, with_input):
    from ftcore.data import IGNORE_INDEX
    from ftcore.data.prepare import format_row, set_chat_template
    from ftcore.hooks import chat_templates, dataset_formats
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import validate
    from ftcore.recipe.load import RawRecipe

    plugins = load_plugins()
    row = {"instruction": "Reverse the words.", "input": "red green blue" if with_input else "",
           "output": "blue green red"}
    for train_on_inputs in (False, True):
        recipe = validate(RawRecipe({"base_model": "x/y", "chat_template": "llama3", "train_on_inputs": train_on_inputs,
                                     "datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, None), plugins)
        template = set_chat_template(recipe, llama, chat_templates(plugins))
        from ftcore.data import FormatContext

        function = dataset_formats(plugins)["alpaca"][0][0]
        example = format_row(row, recipe.datasets[0], function, FormatContext(llama, recipe, template))
        ids, labels = example["input_ids"], example["labels"]
        text = llama.decode(ids)
        assert ids.count(llama.bos_token_id) == 1 and ids[0] == llama.bos_token_id
        assert "### Instruction" not in text and "<|start_header_id|>user<|end_header_id|>" in text
        assert ("red green blue" in text) == with_input
        trained = llama.decode([t for t in labels if t != IGNORE_INDEX])
        if train_on_inputs:
            assert labels[0] == IGNORE_INDEX and all(t != IGNORE_INDEX for t in labels[1:])
        else:
            assert trained == "blue green red<|eot_id|>"
