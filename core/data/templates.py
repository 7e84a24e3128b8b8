"""The text of ftcore's named chat templates and of the Alpaca prompt, written for ftcore.

Public through ``ftcore.api``: the built-in templates plugin registers
``CHAT_TEMPLATES`` under their names (``chat_template: llama3``), ``type:
alpaca`` lays rows out with the preambles, and the testing kit's tiny
tokenizers carry the same texts.

- ``LLAMA3``: Llama 3 / 3.1 headers, ``<|eot_id|>`` ends each turn.
- ``LLAMA3_2_VISION``: ``LLAMA3``, and a content that is a list of parts
  renders ``<|image|>`` for each image part, its text parts as they are.
- ``CHATML``: ``<|im_start|>role ... <|im_end|>``.
- ``QWEN_25``: ChatML with Qwen2.5's default system prompt (``QWEN_25_SYSTEM``)
  when the conversation has no system message, and tool results as Qwen writes them.
"""

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Llama 3.2 Vision: Llama 3's turns; a list of parts becomes its text with <|image|> where each image
# stands. Text-only conversations render exactly as with LLAMA3. There is no dated system block (it
# would depend on whether any later turn has an image, so a turn's text would change with what follows).
LLAMA3_2_VISION = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] | trim }}"
    "{% else %}"
    "{% set parts = namespace(text='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set parts.text = parts.text + '<|image|>' %}"
    "{% elif part['type'] == 'text' %}{% set parts.text = parts.text + part['text'] %}{% endif %}"
    "{% endfor %}"
    "{{ parts.text | trim }}"
    "{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# The system prompt Qwen2.5 models are trained to see when the user gives none (their documented default).
QWEN_25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML as Qwen2.5 writes it: the default system turn first when the conversation has no system
# message of its own, and each tool result as a user turn wrapped in <tool_response> tags (one turn per
# result, so every turn renders the same whatever follows it).
QWEN_25 = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + QWEN_25_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES = {"llama3": LLAMA3, "llama3_2_vision": LLAMA3_2_VISION, "chatml": CHATML, "qwen_25": QWEN_25}

# The Alpaca prompt (type: alpaca without a chat template): the preamble, then ### Instruction / Input / Response.
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                              "further context. Write a response that appropriately completes the request.\n\n")
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n")
