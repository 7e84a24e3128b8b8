"""The named templates of the named_templates plugin: exact text, masks, recipe validation.

Each family gets a tiny tokenizer trained here carrying its real special tokens;
the expected texts are written from each family's published chat format.
"""

import pytest
from conftest import write_jsonl
from ftcore.plugins.named_templates.texts import TEMPLATES as OURS
from ftcore.testing import trained_runs
from ftcore.testing.tiny import DEFAULT_CORPUS
from test_data import (
    CONVERSATION,
    FORMATS,
    TEMPLATES,
    decode,
    format_one,
    make_recipe,
    prepare,
)

# name -> (special tokens, bos, eos, expected render of CONVERSATION, expected trained runs)
CASES = {
    "gemma3": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>",
               ("<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
                "<start_of_turn>user\nName a color<end_of_turn>\n<start_of_turn>model\nRed<end_of_turn>\n"),
               ["Hi there<end_of_turn>", "Red<end_of_turn>"]),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], None, "<|im_end|>",
              ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
               "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nName a color<|im_end|>\n"
               "<|im_start|>assistant\nRed<|im_end|>\n"),
              ["Hi there<|im_end|>", "Red<|im_end|>"]),
    "llama4": (["<|begin_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>"], "<|begin_of_text|>", "<|eot|>",
               ("<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|>"
                "<|header_start|>user<|header_end|>\n\nHello<|eot|><|header_start|>assistant<|header_end|>\n\nHi there<|eot|>"
                "<|header_start|>user<|header_end|>\n\nName a color<|eot|>"
                "<|header_start|>assistant<|header_end|>\n\nRed<|eot|>"),
               ["Hi there<|eot|>", "Red<|eot|>"]),
    "phi_35": (["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|endoftext|>",
               ("<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n"
                "<|user|>\nName a color<|end|>\n<|assistant|>\nRed<|end|>\n"),
               ["Hi there<|end|>", "Red<|end|>"]),
    "phi_4": (["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"], None, "<|im_end|>",
              ("<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hello<|im_end|>"
               "<|im_start|>assistant<|im_sep|>Hi there<|im_end|><|im_start|>user<|im_sep|>Name a color<|im_end|>"
               "<|im_start|>assistant<|im_sep|>Red<|im_end|>"),
              ["Hi there<|im_end|>", "Red<|im_end|>"]),
    "mistral_v1": (["<s>", "</s>"], "<s>", "</s>",
                   "<s> [INST] Be brief.\n\nHello [/INST] Hi there</s> [INST] Name a color [/INST] Red</s>",
                   ["Hi there</s>", "Red</s>"]),
    "mistral_v2v3": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>",
                     "<s>[INST] Be brief.\n\nHello[/INST] Hi there</s>[INST] Name a color[/INST] Red</s>",
                     ["Hi there</s>", "Red</s>"]),
    "mistral_v3_tekken": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>",
                          "<s>[INST]Be brief.\n\nHello[/INST]Hi there</s>[INST]Name a color[/INST]Red</s>",
                          ["Hi there</s>", "Red</s>"]),
    "mistral_v7_tekken": (["<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"], "<s>", "</s>",
                          ("<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>"
                           "[INST]Name a color[/INST]Red</s>"),
                          ["Hi there</s>", "Red</s>"]),
    "llama2": (["<s>", "</s>"], "<s>", "</s>",
               "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Name a color [/INST] Red </s>",
               ["Hi there </s>", "Red </s>"]),
    "cohere": (["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>",
                "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"], "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>",
               ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Name a color<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Red<|END_OF_TURN_TOKEN|>"),
               ["Hi there<|END_OF_TURN_TOKEN|>", "Red<|END_OF_TURN_TOKEN|>"]),
    "deepseek_v2": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"], "<｜begin▁of▁sentence｜>",
                    "<｜end▁of▁sentence｜>",
                    ("<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>"
                     "User: Name a color\n\nAssistant: Red<｜end▁of▁sentence｜>"),
                    ["Hi there<｜end▁of▁sentence｜>", "Red<｜end▁of▁sentence｜>"]),
    "deepseek_v3": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
                    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                    ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜>"
                     "<｜User｜>Name a color<｜Assistant｜>Red<｜end▁of▁sentence｜>"),
                    ["Hi there<｜end▁of▁sentence｜>", "Red<｜end▁of▁sentence｜>"]),
    "qwen3_5": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|vision_start|>",
                 "<|image_pad|>", "<|video_pad|>", "<|vision_end|>"], None, "<|im_end|>",
                ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                 "<|im_start|>assistant\n<think>\n\n</think>\n\nHi there<|im_end|>\n"
                 "<|im_start|>user\nName a color<|im_end|>\n"
                 "<|im_start|>assistant\n<think>\n\n</think>\n\nRed<|im_end|>\n"),
                ["Hi there<|im_end|>", "Red<|im_end|>"]),
    "qwen2_vl": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
                  "<|video_pad|>", "<|vision_end|>"], None, "<|im_end|>",
                 ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                  "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nName a color<|im_end|>\n"
                  "<|im_start|>assistant\nRed<|im_end|>\n"),
                 ["Hi there<|im_end|>", "Red<|im_end|>"]),
    "falcon_h1": (["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"], "<|begin_of_text|>",
                  "<|im_end|>",
                  ("<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                   "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nName a color<|im_end|>\n"
                   "<|im_start|>assistant\nRed<|im_end|>\n"),
                  ["Hi there<|im_end|>", "Red<|im_end|>"]),
    "gemma4": (["<bos>", "<eos>", "<|turn>", "<turn|>", "<|image|>", "<|audio|>"], "<bos>", "<turn|>",
               ("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\nHi there<turn|>\n"
                "<|turn>user\nName a color<turn|>\n<|turn>model\nRed<turn|>\n"),
               ["Hi there<turn|>", "Red<turn|>"]),
    "pixtral": (["<s>", "</s>", "[INST]", "[/INST]", "[IMG]"], "<s>", "</s>",
                "<s>[INST]Be brief.\n\nHello[/INST]Hi there</s>[INST]Name a color[/INST]Red</s>",
                ["Hi there</s>", "Red</s>"]),
    "llava": (["<s>", "</s>", "<image>"], "<s>", "</s>",
              "<s>Be brief. USER: Hello ASSISTANT: Hi there</s>USER: Name a color ASSISTANT: Red</s>",
              ["Hi there</s>", "Red</s>"]),
    "jamba": (["<|startoftext|>", "<|endoftext|>", "<|bom|>", "<|eom|>", "<|system|>", "<|user|>", "<|assistant|>"],
              "<|startoftext|>", "<|eom|>",
              ("<|startoftext|><|bom|><|system|> Be brief.<|eom|><|bom|><|user|> Hello<|eom|>"
               "<|bom|><|assistant|> Hi there<|eom|><|bom|><|user|> Name a color<|eom|><|bom|><|assistant|> Red<|eom|>"),
              ["Hi there<|eom|>", "Red<|eom|>"]),
}
SAME_TEXT = {"gemma": "gemma3", "gemma3n": "gemma3", "phi_3": "phi_35", "gemma4_unified": "gemma4", "aya": "cohere"}

_TOKENIZERS = {}


def tiny_tokenizer(name):
    """A byte-level BPE tokenizer trained here on the kit's corpus, with the family's special tokens."""
    if name not in _TOKENIZERS:
        from tokenizers import (
            Tokenizer,
            decoders,
            models,
            pre_tokenizers,
            processors,
            trainers,
        )
        from transformers import PreTrainedTokenizerFast

        special, bos, eos = CASES[name][:3]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(DEFAULT_CORPUS * 2, trainer=trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        _TOKENIZERS[name] = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                                    pad_token=eos)
    return _TOKENIZERS[name]


def runs(tokenizer, example):
    """The trained runs, each without the space a byte-level token merges into the reply's first word (the
    one straddle allowed: a token trains when it overlaps a trained segment; see test_data.py)."""
    return [run.removeprefix(" ") for run in trained_runs(tokenizer, example)]


def render(name, messages, **kwargs):
    return tiny_tokenizer(name).apply_chat_template(messages, chat_template=OURS[name], tokenize=False, **kwargs)


def test_every_name_is_registered_and_shared_texts_are_the_same():
    assert set(OURS) == set(CASES) | set(SAME_TEXT)
    for name, text in OURS.items():
        assert TEMPLATES[name][0] == text, name
    for name, same in SAME_TEXT.items():
        assert OURS[name] == OURS[same]


@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_the_published_format(name):
    assert render(name, CONVERSATION) == CASES[name][3]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_prefix_renders_as_a_prefix(name):
    full = render(name, CONVERSATION)
    for i in range(1, len(CONVERSATION)):
        assert full.startswith(render(name, CONVERSATION[:i])), (name, i)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trained_tokens_are_the_replies_and_their_end_of_turn(name):
    tokenizer = tiny_tokenizer(name)
    example = format_one(tokenizer, {"messages": CONVERSATION}, "chat_template", chat_template=name)
    assert decode(tokenizer, example["input_ids"]) == CASES[name][3]
    assert runs(tokenizer, example) == CASES[name][4]


@pytest.mark.parametrize("name", sorted(CASES))
def test_without_a_system_message(name):
    tokenizer = tiny_tokenizer(name)
    example = format_one(tokenizer, {"messages": CONVERSATION[1:]}, "chat_template", chat_template=name)
    assert "Be brief" not in decode(tokenizer, example["input_ids"])
    assert runs(tokenizer, example) == CASES[name][4]


def test_gemma_without_system_opens_each_user_turn():
    assert render("gemma3", CONVERSATION[1:3]) == ("<bos><start_of_turn>user\nHello<end_of_turn>\n"
                                                  "<start_of_turn>model\nHi there<end_of_turn>\n")


@pytest.mark.parametrize("name,prompt", [("gemma3", "<start_of_turn>model\n"), ("qwen3", "<|im_start|>assistant\n"),
                                         ("llama4", "<|header_start|>assistant<|header_end|>\n\n"),
                                         ("phi_35", "<|assistant|>\n"), ("phi_4", "<|im_start|>assistant<|im_sep|>"),
                                         ("cohere", "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
                                         ("deepseek_v3", "<｜Assistant｜>"),
                                         ("qwen3_5", "<|im_start|>assistant\n<think>\n"),
                                         ("qwen2_vl", "<|im_start|>assistant\n"),
                                         ("falcon_h1", "<|im_start|>assistant\n"), ("gemma4", "<|turn>model\n"),
                                         ("llava", "ASSISTANT:"), ("jamba", "<|bom|><|assistant|>")])
def test_generation_prompt(name, prompt):
    messages = CONVERSATION[:4]
    assert render(name, messages, add_generation_prompt=True) == render(name, messages) + prompt


def test_qwen3_renders_reasoning_content_in_think_tags():
    messages = [{"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there", "reasoning_content": "\nThe user greets me.\n"}]
    assert render("qwen3", messages) == ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
                                         "<think>\nThe user greets me.\n</think>\n\nHi there<|im_end|>\n")
    assert render("qwen3", messages[:1] + [{"role": "assistant", "content": "Hi there"}]).endswith(
        "<|im_start|>assistant\nHi there<|im_end|>\n")


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_name_validates_in_a_recipe(name):
    recipe = make_recipe(chat_template=name, datasets=[{"path": "x.jsonl", "type": "chat_template"}])
    assert recipe.chat_template == name
    assert "chat_template" in FORMATS


# Replies that are words of the templates' own scaffolding: a reply must be found where it is, not in a header.
SCAFFOLDING = [{"role": "system", "content": "a"}, {"role": "user", "content": "INST"},
               {"role": "assistant", "content": "model"}, {"role": "user", "content": "user"},
               {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize("name", sorted(CASES))
def test_replies_that_are_scaffolding_words_are_found_in_place(name):
    tokenizer = tiny_tokenizer(name)
    example = format_one(tokenizer, {"messages": SCAFFOLDING}, "chat_template", chat_template=name)
    eot = CASES[name][4][0][len("Hi there"):]  # what follows a reply in this format (" </s>" for llama2)
    assert runs(tokenizer, example) == ["model" + eot, "a" + eot]


@pytest.mark.parametrize("name", ["gemma3", "llama2", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "pixtral"])
def test_folded_system_prompt_is_never_trained(name):
    tokenizer = tiny_tokenizer(name)
    example = format_one(tokenizer, {"messages": CONVERSATION}, "chat_template", chat_template=name,
                         roles_to_train=["system", "assistant"])
    trained = "".join(trained_runs(tokenizer, example))
    assert "Be brief." in trained and "Hello" not in trained  # the system text is its own turn


SCAFFOLDING_WORDS = ["INST", "/INST", "model", "user", "system", "assistant", "think", "User:", "Assistant:", "SYS",
                     "end", "a", "eot", "café", "日本", "(ok)", "42", "Red", "don't", "?"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_conversations_train_exactly_the_replies(name):
    import random

    r = random.Random(name)
    tokenizer = tiny_tokenizer(name)
    eot = CASES[name][4][0][len("Hi there"):]
    text = lambda: " ".join(r.choice(SCAFFOLDING_WORDS) for _ in range(r.randint(1, 6)))
    for _ in range(25):
        messages = [{"role": "system", "content": text()}] if r.random() < 0.5 else []
        for _ in range(r.randint(1, 3)):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        example = format_one(tokenizer, {"messages": messages}, "chat_template", chat_template=name)
        replies = [m["content"] + eot for m in messages if m["role"] == "assistant"]
        assert runs(tokenizer, example) == replies, messages


@pytest.mark.parametrize("name", ["gemma3", "qwen3", "llama4", "mistral_v7_tekken", "cohere", "deepseek_v3", "qwen3_5",
                                  "gemma4", "falcon_h1"])
def test_a_recipe_naming_the_template_prepares_masked_examples(name, tmp_path):
    tokenizer = tiny_tokenizer(name)
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    data = prepare(tokenizer, datasets=[{"path": str(path), "type": "chat_template"}], chat_template=name)
    assert len(data.train) == 2
    assert [runs(tokenizer, example) for example in data.train] == [CASES[name][4], CASES[name][4][:1]]
    assert decode(tokenizer, data.train[0]["input_ids"]) == CASES[name][3]


def test_qwen3_5_renders_reasoning_in_every_reply_and_opens_it_in_the_generation_prompt():
    messages = [{"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there", "reasoning_content": "\nThe user greets me.\n"}]
    assert render("qwen3_5", messages) == ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
                                           "<think>\nThe user greets me.\n</think>\n\nHi there<|im_end|>\n")
    assert render("qwen3_5", messages[:1], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tokenizer = tiny_tokenizer("qwen3_5")
    example = format_one(tokenizer, {"messages": messages}, "chat_template", chat_template="qwen3_5")
    (trained,) = runs(tokenizer, example)  # the reasoning trains with the reply; the tag opening it does not
    assert trained.lstrip("\n") == "The user greets me.\n</think>\n\nHi there<|im_end|>"


def test_qwen2_vl_adds_its_default_system_turn_only_without_a_system_message():
    assert render("qwen2_vl", CONVERSATION[1:3]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there<|im_end|>\n")
    assert render("qwen2_vl", CONVERSATION).count("<|im_start|>system") == 1


def test_gemma4_without_system_has_no_system_turn():
    assert render("gemma4", CONVERSATION[1:3]) == ("<bos><|turn>user\nHello<turn|>\n"
                                                  "<|turn>model\nHi there<turn|>\n")


# A user message given as a list of parts, as a processor's messages are: each image stands as the family's
# placeholder, in place.
PARTS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
         {"role": "assistant", "content": "A cat"}]


IMAGE = {"qwen3_5": "<|vision_start|><|image_pad|><|vision_end|>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
         "gemma4": "<|image|>", "pixtral": "[IMG]", "llava": "<image>\n"}


@pytest.mark.parametrize("name,expected", [
    ("qwen3_5", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\nA cat<|im_end|>\n"),
    ("qwen2_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
                 "<|im_start|>assistant\nA cat<|im_end|>\n"),
    ("gemma4", "<bos><|turn>user\n<|image|>What is it?<turn|>\n<|turn>model\nA cat<turn|>\n"),
    ("pixtral", "<s>[INST][IMG]What is it?[/INST]A cat</s>"),
    ("llava", "<s>USER: <image>\nWhat is it? ASSISTANT: A cat</s>"),
])
def test_image_parts_render_as_the_family_placeholder(name, expected):
    assert render(name, PARTS) == expected
    # the same text as the string content ftcore's conversation formatter gives the template
    assert render(name, [{"role": "user", "content": IMAGE[name] + "What is it?"}, PARTS[1]]) == expected


def test_jamba_trains_its_end_of_message_token_when_the_eos_is_another():
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer("jamba").backend_tokenizer,
                                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    example = format_one(tokenizer, {"messages": CONVERSATION}, "chat_template", chat_template="jamba")
    assert runs(tokenizer, example) == ["Hi there<|eom|>", "Red<|eom|>"]  # <|eom|> is a known end of turn
    example = format_one(tokenizer, {"messages": CONVERSATION}, "chat_template", chat_template="jamba",
                         recipe_keys={"eot_tokens": ["<|eom|>"]})
    assert runs(tokenizer, example) == ["Hi there<|eom|>", "Red<|eom|>"]
