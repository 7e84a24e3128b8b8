"""Built-in chat templates (``chat_template: NAME``), written for ftcore.

- ``llama3``: Llama 3 / 3.1 headers, ``<|eot_id|>`` ends each turn.
- ``llama3_2_vision``: ``llama3``, and a content that is a list of parts
  renders ``<|image|>`` for each image part, its text parts as they are.
- ``chatml``: ``<|im_start|>role ... <|im_end|>``.
- ``qwen_25``: ChatML with Qwen2.5's default system prompt when the
  conversation has no system message, and tool results as Qwen writes them.
- ``tokenizer_default``: the tokenizer's own template.
- ``jinja``: the template in ``chat_template_jinja`` (a string or a file path).

Whichever is chosen is set on the tokenizer and saved with it in the run
folder, so inference uses the template training used.
"""

from pathlib import Path

from ftcore import FtcoreError, hookimpl

FTCORE_CONTRACT = "1"

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


def tokenizer_default(tokenizer, recipe):
    return getattr(tokenizer, "chat_template", None)


def _is_file(path):
    try:
        return path.is_file()
    except OSError:  # an inline template is often too long to be a file name
        return False


def jinja(tokenizer, recipe):
    text = recipe.chat_template_jinja
    path = Path(text).expanduser()
    if "{" not in text and path.suffix in (".jinja", ".j2", ".txt") or _is_file(path):
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FtcoreError(f"chat_template_jinja: cannot read '{text}': {exc.strerror}") from exc
    return text


@hookimpl(trylast=True)
def register_chat_templates(register):
    register("llama3", LLAMA3)
    register("llama3_2_vision", LLAMA3_2_VISION)
    register("chatml", CHATML)
    register("qwen_25", QWEN_25)
    register("tokenizer_default", tokenizer_default)
    register("jinja", jinja)
