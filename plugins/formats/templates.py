"""Built-in chat templates (``chat_template: NAME``), written for ftcore.

- ``llama3``: Llama 3 / 3.1 headers, ``<|eot_id|>`` ends each turn.
- ``chatml``: ``<|im_start|>role ... <|im_end|>``.
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
    register("chatml", CHATML)
    register("tokenizer_default", tokenizer_default)
    register("jinja", jinja)
