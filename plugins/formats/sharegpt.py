"""``type: sharegpt``: ``conversations`` of ``{from, value}`` turns, rendered by the chat template.

A ShareGPT row is a conversation under other names: the list is under
``conversations``, each turn names its speaker in ``from`` (``human``,
``gpt``, ``system``) and its text in ``value``. Those are only the defaults
of the ``chat_template`` options, and the row goes through the very same
format function (``ftcore.api.format_chat``, which ``type: chat_template``
registers too), so every option of ``chat_template`` (``roles``,
``roles_to_train``, ``train_on_eos``, ``field_messages``,
``message_property_mappings``, per-turn ``train``, images, ...) works here the
same way.

``roles`` may also use Axolotl's older ShareGPT spelling, ``input`` for the
user side and ``output`` for the assistant side.
"""

from typing import ClassVar

from pydantic import field_validator

from ftcore import hookimpl
from ftcore.api import ChatOptions, format_chat

FTCORE_CONTRACT = "1"

OLDER_ROLE_NAMES = {"input": "user", "output": "assistant"}  # Axolotl's ShareGPT prompter spelling


class ShareGPTOptions(ChatOptions):
    default_role_key: ClassVar[str] = "from"
    default_content_key: ClassVar[str] = "value"

    field_messages: str = "conversations"

    @field_validator("roles")
    @classmethod
    def _older_role_names(cls, roles):
        if roles is None:
            return None
        merged = {}
        for target, names in roles.items():
            merged.setdefault(OLDER_ROLE_NAMES.get(target, target), []).extend(names)
        return merged


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("sharegpt", format_chat, ShareGPTOptions)  # the same function: only the defaults differ
