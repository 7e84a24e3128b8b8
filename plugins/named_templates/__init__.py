"""More named chat templates (``chat_template: NAME``), under Axolotl's names, written for ftcore.

Each template is written from its model family's published chat format (role
headers, BOS, end-of-turn token, where the system prompt goes, the generation
prompt); the texts are in ``texts.py``, one constant per format.

Rendering rules every template here keeps, so that ftcore's conversation
formatter can find each turn in the rendered text:

- A conversation renders as the concatenation of its turns: the render of
  ``messages[:i]`` is a prefix of the render of ``messages``. Nothing is
  appended at the end of the whole conversation only.
- A family that has no system turn (Gemma, Llama 2, Mistral before v7) folds
  the system prompt into the first user turn, as its own template does. The
  system message renders the opening of that user turn, and the user message
  right after it renders the rest, so the system text stays in its own turn.
- Contents are trimmed where the family's own template trims them.
- A content given as a list of parts (a processor's messages) renders its
  text parts and, in the vision families' templates, the family's
  placeholder where each image stands; ftcore's own formatter passes string
  contents, already holding whatever text a content-part handler gave.
"""

from ftcore import hookimpl

from .texts import TEMPLATES

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def register_chat_templates(register):
    for name, text in TEMPLATES.items():
        register(name, text)
