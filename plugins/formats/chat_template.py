"""``type: chat_template``: OpenAI-style ``messages`` rendered by the chat template.

The format itself is ``ftcore.api.format_chat`` with its keys
``ftcore.api.ChatOptions`` (``field_messages``, ``roles_to_train``,
``train_on_eos``, ``message_property_mappings``, ``roles``, per-turn ``train``,
``field_images``, ...): ``type: sharegpt`` registers the same function with
ShareGPT's defaults, so the two are one implementation, and a format that builds
its messages another way calls ``ftcore.api.conversation_segments``. See
docs/data.md for which tokens train.

The top-level ``eot_tokens`` (Axolotl's key) is owned here: the tokens that end
a turn, trained with the turn as ``train_on_eot`` says (per dataset; default:
as ``train_on_eos``). Unset, the core looks for the end-of-turn tokens of the
common families (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``, ...) in the
rendered text, else uses the tokenizer's EOS.

A message's content may be a list of parts; non-text parts (images) go to the
content-part handler a plugin registers for their type (the vision plugin
handles ``image``). Without one, such a row is a bad row.
"""

from typing import Any

from pydantic import Field, field_validator

from ftcore import hookimpl
from ftcore.api import ChatOptions, RecipeKeys, format_chat

FTCORE_CONTRACT = "1"


class ChatKeys(RecipeKeys):
    eot_tokens: list[str] | None = Field(None, description="the tokens that end a turn in the chat template "
                                                           "(trained with the turn, see train_on_eot); unset: the "
                                                           "known end-of-turn tokens the template writes, else EOS")

    chat_template_kwargs: dict[str, Any] | None = Field(None, description="variables the chat template reads "
                                                                          "while rendering, as transformers' "
                                                                          "apply_chat_template(**kwargs) passes "
                                                                          "them: e.g. {enable_thinking: false}")

    @field_validator("chat_template_kwargs")
    @classmethod
    def _names(cls, variables):
        for name in variables or {}:
            if not name.isidentifier():
                raise ValueError(f"'{name}' is not a template variable name (letters, digits and _)")
        return variables or None

    @field_validator("eot_tokens")
    @classmethod
    def _not_blank(cls, tokens):
        if tokens is not None and any(not t for t in tokens):
            raise ValueError("each end-of-turn token must be a non-empty string, such as <|eot_id|>")
        return tokens or None


@hookimpl(trylast=True)
def recipe_keys(register):
    register(ChatKeys)


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
