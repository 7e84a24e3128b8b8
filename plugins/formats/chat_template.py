"""``type: chat_template``: OpenAI-style ``messages`` rendered by the chat template.

The format itself is ``ftcore.api.format_chat`` with its keys
``ftcore.api.ChatOptions`` (``field_messages``, ``roles_to_train``,
``train_on_eos``, ``message_property_mappings``, ``roles``, per-turn ``train``,
``field_images``, ...): ``type: sharegpt`` registers the same function with
ShareGPT's defaults, so the two are one implementation, and a format that builds
its messages another way calls ``ftcore.api.conversation_segments``. See
docs/data.md for which tokens train.

A message's content may be a list of parts; non-text parts (images) go to the
content-part handler a plugin registers for their type (the vision plugin
handles ``image``). Without one, such a row is a bad row.
"""

from ftcore import hookimpl
from ftcore.api import ChatOptions, format_chat

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for key in ("datasets", "test_datasets"):
        for i, spec in enumerate(getattr(recipe, key) or []):
            own = spec.options.chat_template if isinstance(spec.options, ChatOptions) else None
            if own and own != (recipe.chat_template or "tokenizer_default"):
                error(f"{key}[{i}].chat_template", f"'{own}' differs from the recipe's chat_template "
                      f"({recipe.chat_template or 'tokenizer_default'}); one template per run: set it at the top level")


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("chat_template", format_chat, ChatOptions)
