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
folder, so inference uses the template training used. The named templates'
text is ``ftcore.api.CHAT_TEMPLATES`` (the testing kit's tiny tokenizers carry
the same); this plugin registers them.
"""

from pathlib import Path

from ftcore import hookimpl
from ftcore.api import CHAT_TEMPLATES, FtcoreError

FTCORE_CONTRACT = "1"


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
    for name, text in CHAT_TEMPLATES.items():  # llama3, llama3_2_vision, chatml, qwen_25
        register(name, text)
    register("tokenizer_default", tokenizer_default)
    register("jinja", jinja)
