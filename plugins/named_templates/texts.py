"""The text of each named template, written for ftcore from the family's published chat format.

Names are Axolotl's (its ``ChatTemplate`` names); several names share one text
where the families' formats are the same for text conversations.
"""

# The opening of a turn that carries the system prompt folded into the first user turn (families without
# a system role): rendered by the system message itself, so each turn's text is its own.
_AFTER_SYSTEM = "{% set after_system = loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system' %}"


def _content(placeholders, trim=False):
    """Jinja writing the message's content: a string as it is, or a list of parts with each text part's text
    and, where a part of another type stands, its placeholder (``placeholders``: part type -> text);
    trimmed where the family trims.

    ftcore's conversation formatter gives templates string contents (a plugin's content-part handler has
    already put its text in place of each part); the list form is for rendering a processor's messages
    directly (inference)."""
    parts = ("{% set parts = namespace(text='') %}"
             "{% for part in message['content'] %}"
             "{% if part is string %}{% set parts.text = parts.text + part %}"
             "{% elif part['type'] == 'text' %}{% set parts.text = parts.text + part['text'] %}")
    for kind, text in placeholders.items():
        parts += "{% elif part['type'] == '" + kind + "' %}{% set parts.text = parts.text + " + repr(text) + " %}"
    parts += "{% endif %}{% endfor %}"
    out = " | trim" if trim else ""
    # it ends with an expression, not a block tag: transformers renders with trim_blocks, which would eat a
    # newline right after the template's {% endif %}
    return ("{% if message['content'] is string %}{% set content = message['content'] %}"
            "{% else %}" + parts + "{% set content = parts.text %}{% endif %}{{ content" + out + " }}")


# Gemma (1, 2, 3, 3n): <start_of_turn>user|model ... <end_of_turn>; the system prompt opens the first user
# turn, followed by a blank line; contents trimmed; BOS first.
GEMMA = (
    "{{ bos_token }}"
    "{% for message in messages %}" + _AFTER_SYSTEM +
    "{% if message['role'] == 'system' %}"
    "<start_of_turn>user\n{{ message['content'] | trim }}\n\n"
    "{% else %}"
    "{% if after_system and message['role'] != 'user' %}<end_of_turn>\n{% endif %}"
    "{% if not (after_system and message['role'] == 'user') %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% endif %}"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages and messages[-1]['role'] == 'system' %}<end_of_turn>\n{% endif %}"
    "<start_of_turn>model\n"
    "{% endif %}"
)

# Qwen3: ChatML; an assistant message's reasoning_content renders first, inside <think> ... </think> and a
# blank line; a tool result is a user turn wrapped in <tool_response> (one turn per result). No default
# system prompt.
QWEN3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n"
    "{% if message['reasoning_content'] is defined and message['reasoning_content'] %}"
    "<think>\n{{ message['reasoning_content'] | trim }}\n</think>\n\n"
    "{% endif %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Llama 4: BOS, <|header_start|>role<|header_end|> and a blank line, the content trimmed, <|eot|>.
LLAMA4 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|header_start|>{{ message['role'] }}<|header_end|>\n\n{{ message['content'] | trim }}<|eot|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)

# Phi-3 and Phi-3.5: <|system|>, <|user|>, <|assistant|> each on its own line, <|end|> and a newline.
PHI_3 = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Phi-4: <|im_start|>role<|im_sep|>content<|im_end|>, no newlines.
PHI_4 = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}<|im_sep|>{{ message['content'] }}<|im_end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
)


def _inst(open_, close, reply, content="{{ message['content'] }}"):
    """Mistral's [INST] formats before v7: BOS once, ``open_`` user ``close``, ``reply`` + EOS; the system
    prompt opens the first user turn, followed by a blank line. ``content`` writes a message's content."""
    return (
        "{{ bos_token }}"
        "{% for message in messages %}" + _AFTER_SYSTEM +
        "{% if message['role'] == 'system' %}"
        + open_ + content + "\n\n"
        "{% elif message['role'] == 'user' %}"
        "{% if not after_system %}" + open_ + "{% endif %}"
        + content + close +
        "{% elif message['role'] == 'assistant' %}"
        "{% if after_system %}" + close + "{% endif %}"
        + reply + content + "{{ eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    )


MISTRAL_V1 = _inst(" [INST] ", " [/INST]", " ")  # "<s> [INST] user [/INST] reply</s>"
MISTRAL_V2V3 = _inst("[INST] ", "[/INST]", " ")  # "<s>[INST] user[/INST] reply</s>"
MISTRAL_V3_TEKKEN = _inst("[INST]", "[/INST]", "")  # "<s>[INST]user[/INST]reply</s>"

# Mistral v7 (Tekken): BOS, [SYSTEM_PROMPT]...[/SYSTEM_PROMPT], [INST]user[/INST], reply + EOS.
MISTRAL_V7_TEKKEN = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ message['content'] }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Llama 2 chat: each exchange "<s>[INST] user [/INST] reply </s>"; the system prompt opens the first
# [INST] inside <<SYS>> ... <</SYS>> and a blank line; contents trimmed.
LLAMA2 = (
    "{% for message in messages %}" + _AFTER_SYSTEM +
    "{% if message['role'] == 'system' %}"
    "{{ bos_token }}[INST] <<SYS>>\n{{ message['content'] | trim }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}"
    "{% if not after_system %}{{ bos_token }}[INST] {% endif %}"
    "{{ message['content'] | trim }} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    "{% if after_system %} [/INST]{% endif %}"
    " {{ message['content'] | trim }} {{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Cohere Command R / R+: <|START_OF_TURN_TOKEN|> and a role token (SYSTEM, USER, CHATBOT), the content
# trimmed, <|END_OF_TURN_TOKEN|>; BOS first.
COHERE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|START_OF_TURN_TOKEN|>"
    "{{ {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'}"
    "[message['role']] }}"
    "{{ message['content'] | trim }}<|END_OF_TURN_TOKEN|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)

# DeepSeek-V2 chat: BOS, the system prompt and a blank line, "User: ...\n\n", "Assistant: reply" + EOS.
DEEPSEEK_V2 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# DeepSeek-V3: BOS, the system prompt as it is, <｜User｜>user, <｜Assistant｜>reply + <｜end▁of▁sentence｜>.
DEEPSEEK_V3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<｜User｜>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<｜Assistant｜>{{ message['content'] }}<｜end▁of▁sentence｜>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)

# Qwen's vision placeholders (Qwen2-VL, Qwen2.5-VL, Qwen3.5): an image or video part stands in its text.
_QWEN_CONTENT = _content({"image": "<|vision_start|><|image_pad|><|vision_end|>",
                           "video": "<|vision_start|><|video_pad|><|vision_end|>"})

# Qwen3.5: ChatML; every assistant turn opens with its reasoning inside <think> ... </think> and a blank line,
# an empty block (<think>\n\n</think>\n\n) when the message has no reasoning_content, as Qwen3.5 writes the
# replies after the last user message; the generation prompt opens the reasoning (<think>\n), or writes the
# empty block with enable_thinking=false. Tool results as in QWEN3; image and video parts as Qwen's
# vision placeholders. No default system prompt.
QWEN3_5 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n<think>\n{{ message['reasoning_content'] | default('', true) | trim }}\n</think>\n\n"
    + _QWEN_CONTENT + "<|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)

# Qwen2-VL / Qwen2.5-VL: ChatML with Qwen2-VL's default system turn ("You are a helpful assistant.") when the
# conversation does not open with a system message; image and video parts as Qwen's vision placeholders.
QWEN2_VL = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Falcon-H1: BOS, then ChatML.
FALCON_H1 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma 4: BOS, <|turn>system|user|model and a newline, the content trimmed, <turn|> and a newline (a system
# role of its own, unlike Gemma 1-3); an image part is <|image|>, an audio part <|audio|>. Reasoning is not
# rendered (Gemma 4 keeps earlier turns' thoughts out of the conversation).
GEMMA4 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    + _content({"image": "<|image|>", "audio": "<|audio|>"}, trim=True) +
    "<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

# Pixtral 12B (Mistral NeMo's Tekken format): as MISTRAL_V3_TEKKEN; an image part is [IMG].
PIXTRAL = _inst("[INST]", "[/INST]", "", content=_content({"image": "[IMG]"}))

# LLaVA 1.5 (Vicuna v1 conversation): BOS, the system prompt and a space, "USER: ... ", "ASSISTANT: reply" + EOS;
# an image part is <image> and a newline.
_LLAVA_CONTENT = _content({"image": "<image>\n"})
LLAVA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + _LLAVA_CONTENT + " "
    "{% elif message['role'] == 'user' %}USER: " + _LLAVA_CONTENT + " "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: " + _LLAVA_CONTENT + "{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Jamba 1.5: <|startoftext|>, then each message as <|bom|><|role|>, a space, the content and <|eom|>; the
# generation prompt is <|bom|><|assistant|> (the reply brings its own leading space).
JAMBA = (
    "<|startoftext|>"
    "{% for message in messages %}"
    "<|bom|><|{{ message['role'] }}|> {{ message['content'] }}<|eom|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|bom|><|assistant|>{% endif %}"
)

TEMPLATES = {
    "gemma": GEMMA, "gemma3": GEMMA, "gemma3n": GEMMA,
    "qwen3": QWEN3,
    "llama4": LLAMA4,
    "phi_3": PHI_3, "phi_35": PHI_3,
    "phi_4": PHI_4,
    "mistral_v1": MISTRAL_V1, "mistral_v2v3": MISTRAL_V2V3, "mistral_v3_tekken": MISTRAL_V3_TEKKEN,
    "mistral_v7_tekken": MISTRAL_V7_TEKKEN,
    "llama2": LLAMA2,
    "cohere": COHERE, "aya": COHERE,
    "deepseek_v2": DEEPSEEK_V2, "deepseek_v3": DEEPSEEK_V3,
    "qwen3_5": QWEN3_5,
    "qwen2_vl": QWEN2_VL,
    "falcon_h1": FALCON_H1,
    "gemma4": GEMMA4, "gemma4_unified": GEMMA4,
    "pixtral": PIXTRAL,
    "llava": LLAVA,
    "jamba": JAMBA,
}
