"""Axolotl's chat-template options (eot_tokens, train_on_eot, roles_to_train through roles,
message_field_training_detail, field_thinking, split_thinking) and the older prompt styles (alpaca:chat,
jeopardy, ...): the trained tokens, decoded, are exactly the reply text and its end of turn."""

import pytest

from ftcore import hooks
from ftcore.data import FormatContext
from ftcore.data.prepare import format_row, set_chat_template
from ftcore.errors import FtcoreError
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from ftcore.testing import trained_runs

PLUGINS = load_plugins()
FORMATS = hooks.dataset_formats(PLUGINS)
TEMPLATES = hooks.chat_templates(PLUGINS)

CONVERSATION = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
                {"role": "user", "content": "Name a color"}, {"role": "assistant", "content": "Red"}]

# ChatML with Qwen3's way of writing a reply's reasoning before its content
THINKING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{% if m['role'] == 'assistant' and m.get('reasoning_content') %}"
            "<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def run(tokenizer, row, type="chat_template", chat_template="chatml", recipe_keys=None, jinja=None, **options):
    keys = {"chat_template": "jinja", "chat_template_jinja": jinja} if jinja else {"chat_template": chat_template}
    recipe = validate(RawRecipe({"base_model": "unused/model", **keys, **(recipe_keys or {}),
                                 "datasets": [{"path": "unused.jsonl", "type": type, **options}]}, None), PLUGINS)
    template = set_chat_template(recipe, tokenizer, TEMPLATES)
    (function, _), _plugin = FORMATS[type]
    return format_row(row, recipe.datasets[0], function,
                      FormatContext(tokenizer=tokenizer, recipe=recipe, chat_template=template))


def runs(tokenizer, messages, **kw):
    return trained_runs(tokenizer, run(tokenizer, {"messages": messages}, **kw))


def text(tokenizer, example):
    return tokenizer.decode(example["input_ids"], clean_up_tokenization_spaces=False)


# ── eot_tokens and train_on_eot ──────────────────────────────────────────────


def test_eot_tokens_is_an_owned_key_not_refused():
    recipe = validate(RawRecipe({"base_model": "x/y", "eot_tokens": ["<|im_end|>"]}, None), PLUGINS)
    assert recipe.get("eot_tokens") == ["<|im_end|>"]


def test_eot_tokens_name_the_tokens_that_end_a_turn(qwen):
    # a template whose turns end in <|endoftext|> then <|im_end|>: only the named token ends a turn
    jinja = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|><|im_end|>\n"
             "{% endfor %}")
    assert runs(qwen, CONVERSATION, jinja=jinja) == ["Hi there<|endoftext|><|im_end|>", "Red<|endoftext|><|im_end|>"]
    assert runs(qwen, CONVERSATION, jinja=jinja, recipe_keys={"eot_tokens": ["<|endoftext|>"]},
                train_on_eot="turn", train_on_eos="none") == ["Hi there<|endoftext|>", "Red<|endoftext|>"]


@pytest.mark.parametrize("train_on_eot,expected", [
    ("turn", ["Hi there<|im_end|>", "Red<|im_end|>"]),
    ("last", ["Hi there", "Red<|im_end|>"]),
    ("all", ["<|im_end|>", "Hi there<|im_end|>", "<|im_end|>", "Red<|im_end|>"]),
    ("none", ["Hi there", "Red"]),
])
def test_train_on_eot(qwen, llama, train_on_eot, expected):
    # the eos of this tiny Llama is <|eot_id|>, not an end of turn of ChatML: train_on_eot may differ from train_on_eos
    llama_chatml = [r.replace("<|im_end|>", "<|eot_id|>") for r in expected]
    keys = {"eot_tokens": ["<|eot_id|>"]}
    assert runs(llama, CONVERSATION, chat_template="llama3", train_on_eot=train_on_eot, recipe_keys=keys,
                train_on_eos=train_on_eot) == llama_chatml
    # qwen's EOS is <|im_end|>, itself the end of turn: train_on_eot alone (train_on_eos follows it)
    assert runs(qwen, CONVERSATION, train_on_eot=train_on_eot, train_on_eos=train_on_eot) == expected


def test_eos_after_the_end_of_turn_follows_train_on_eos(llama):
    # <|eot_id|> ends the turn, then the tokenizer's EOS (<|end_of_text|> here) follows each reply
    llama.eos_token = "<|end_of_text|>"
    try:
        jinja = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                 "<|eot_id|>{% if m['role'] == 'assistant' %}<|end_of_text|>{% endif %}{% endfor %}")
        assert runs(llama, CONVERSATION, jinja=jinja) == ["Hi there<|eot_id|><|end_of_text|>",
                                                          "Red<|eot_id|><|end_of_text|>"]
        assert runs(llama, CONVERSATION, jinja=jinja, train_on_eos="none", train_on_eot="turn") == [
            "Hi there<|eot_id|>", "Red<|eot_id|>"]
        # train_on_eot follows train_on_eos unless set: none of the two tokens
        assert runs(llama, CONVERSATION, jinja=jinja, train_on_eos="none") == ["Hi there", "Red"]
        assert runs(llama, CONVERSATION, jinja=jinja, train_on_eot="none") == [
            "Hi there", "<|end_of_text|>", "Red", "<|end_of_text|>"]
    finally:
        llama.eos_token = "<|eot_id|>"


def test_train_on_eot_that_contradicts_train_on_eos_on_the_eos_token_is_refused(qwen):
    with pytest.raises(FtcoreError, match="train_on_eot .*train_on_eos"):
        run(qwen, {"messages": CONVERSATION}, train_on_eot="all", train_on_eos="turn")


# ── roles_to_train ───────────────────────────────────────────────────────────


def test_roles_to_train_user_and_assistant_and_names_mapped_through_roles(qwen):
    assert runs(qwen, CONVERSATION, roles_to_train=["assistant", "user"]) == [
        "Hello<|im_end|>", "Hi there<|im_end|>", "Name a color<|im_end|>", "Red<|im_end|>"]
    messages = [{"role": "prompter", "content": "Hello"}, {"role": "bot", "content": "Hi there"}]
    roles = {"user": ["prompter"], "assistant": ["bot"]}
    assert runs(qwen, messages, roles=roles, roles_to_train=["prompter"]) == ["Hello<|im_end|>"]
    sharegpt = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi there"}]
    assert trained_runs(qwen, run(qwen, {"conversations": sharegpt}, type="sharegpt", roles_to_train=["gpt"])) == [
        "Hi there<|im_end|>"]


# ── message_field_training / message_field_training_detail ───────────────────


def test_message_field_training_and_training_detail(qwen):
    reply = "I'm doing very well, thank you!"
    messages = [{"role": "user", "content": "How are you?", "train": False},
                {"role": "assistant", "content": reply,
                 "detail": [{"begin_offset": 0, "end_offset": 8, "train": False},
                            {"begin_offset": 9, "end_offset": 18, "train": True},
                            {"begin_offset": 19, "end_offset": 30, "train": False}]},
                {"role": "user", "content": "Good", "train": True}]
    assert runs(qwen, messages, message_field_training="train", message_field_training_detail="detail") == [
        " very well", "<|im_end|>", "Good<|im_end|>"]
    assert reply[9:19] == " very well"


def test_training_detail_offsets_outside_the_content_are_a_bad_row(qwen):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yes", "detail": [{"begin_offset": 0, "end_offset": 3, "train": True}]}]
    with pytest.raises(ValueError, match="outside the content"):
        run(qwen, {"messages": messages}, message_field_training_detail="detail")


# ── field_thinking / split_thinking ──────────────────────────────────────────


def test_field_thinking_is_rendered_and_trained_with_the_reply(qwen):
    messages = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5", "thought": "add them"}]
    example = run(qwen, {"messages": messages}, jinja=THINKING, field_thinking="thought")
    assert text(qwen, example) == ("<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
                                   "<think>\nadd them\n</think>\n\n5<|im_end|>\n")
    assert trained_runs(qwen, example) == ["<think>\nadd them\n</think>\n\n5<|im_end|>"]


def test_split_thinking_moves_the_think_block_into_the_reasoning(qwen):
    messages = [{"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": "<think> add them </think>\n5"}]
    example = run(qwen, {"messages": messages}, jinja=THINKING, split_thinking=True)
    assert text(qwen, example).endswith("<|im_start|>assistant\n<think>\nadd them\n</think>\n\n5<|im_end|>\n")
    assert trained_runs(qwen, example) == ["<think>\nadd them\n</think>\n\n5<|im_end|>"]
    # without split_thinking the content stays as written
    assert trained_runs(qwen, run(qwen, {"messages": messages}, jinja=THINKING)) == [
        "<think> add them </think>\n5<|im_end|>"]


# ── the older prompt styles ──────────────────────────────────────────────────

SYS_IN = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.")
SYS = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.mark.parametrize("type,row,prompt,reply", [
    ("alpaca:chat", {"instruction": "Add", "input": "2 3", "output": "5"},
     f"SYSTEM: {SYS_IN}\nUSER: Add\n2 3\nASSISTANT:", "5"),
    ("alpaca:chat", {"instruction": "Add", "output": "5"}, f"SYSTEM: {SYS}\nUSER: Add\nASSISTANT:", "5"),
    ("alpaca:phi", {"instruction": "Add", "output": "5"},
     f"<|system|>\n{SYS}<|end|>\n<|user|>\nAdd<|end|>\n<|assistant|>\n", "5"),
    ("alpaca:chatml", {"instruction": "Add", "output": "5"},
     f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nAdd<|im_end|>\n<|im_start|>assistant\n", "5"),
    ("jeopardy", {"question": "Red planet", "category": "SPACE", "answer": "Mars"},
     f"{SYS_IN}\n\n### Instruction:\nRed planet\n\n### Input:\nSPACE\n\n### Response:\n", "what is Mars"),
    ("oasst", {"INSTRUCTION": "Hi", "RESPONSE": "Hello"}, f"{SYS}\n\n### Instruction:\nHi\n\n### Response:\n",
     "Hello"),
    ("gpteacher", {"instruction": "Hi", "response": "Hello"}, f"{SYS}\n\n### Instruction:\nHi\n\n### Response:\n",
     "Hello"),
    ("summarizetldr", {"article": "Long text", "summary": "Short"},
     "USER: Summarize the following article as a TL;DR.\nLong text\nASSISTANT:", "Short"),
    ("concisechoice", {"question": "Sky?", "choices": ["blue", "red"], "explanation": "blue"},
     "Choose the answer that best answers the question. Be concise in your response.\n\n"
     "USER: Sky?\n- \"blue\"\n- \"red\"\nASSISTANT:", "blue"),
    ("alpaca_chat.load_qa", {"question": "Q", "answer": "A"}, f"SYSTEM: {SYS}\nUSER: Q\nASSISTANT:", "A"),
])
def test_legacy_styles_render_exactly_and_train_the_reply_and_eos(llama, type, row, prompt, reply):
    example = run(llama, row, type=type, chat_template=None)
    assert text(llama, example) == "<|begin_of_text|>" + prompt + reply + "<|eot_id|>"
    assert "".join(trained_runs(llama, example)).strip() == reply + "<|eot_id|>"


# ── chat_template_kwargs ─────────────────────────────────────────────────────

# Qwen3's switch: with enable_thinking false, a reply opens with an empty think block
SWITCH = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{% if m['role'] == 'assistant' and enable_thinking is defined and not enable_thinking %}"
          "<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}")


def test_chat_template_kwargs_reach_the_template_as_variables(qwen):
    messages = CONVERSATION[:2]
    plain = run(qwen, {"messages": messages}, jinja=SWITCH)
    assert "<think>" not in text(qwen, plain)
    off = run(qwen, {"messages": messages}, jinja=SWITCH, recipe_keys={"chat_template_kwargs": {"enable_thinking": False}})
    assert text(qwen, off).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHi there<|im_end|>\n")
    # the empty think block is the template's scaffolding (Qwen3 writes it into the generation prompt): not trained
    assert trained_runs(qwen, off) == ["Hi there<|im_end|>"]
    on = run(qwen, {"messages": messages}, jinja=SWITCH, recipe_keys={"chat_template_kwargs": {"enable_thinking": True}})
    assert "<think>" not in text(qwen, on)


def test_chat_template_kwargs_names_must_be_template_variables():
    from ftcore.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        validate(RawRecipe({"base_model": "x/y", "chat_template_kwargs": {"enable-thinking": False}}, None), PLUGINS)
    assert "chat_template_kwargs" in info.value.problems[0][0] and "enable-thinking" in info.value.problems[0][1]
