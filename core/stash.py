"""The per-run stash: typed state that passes between the hooks of one run.

A plugin that makes something another hook needs later (the processor that came
with the tokenizer, the ids of tokens the recipe added, the module names an
adapter should target) puts it in the run's ``Stash`` under a ``StashKey``,
instead of setting an attribute on a transformers object or keeping a module
global. Keys are module-level constants, so two plugins never collide by
accident, and each documents the type of its value::

    from ftcore.api import Stash, StashKey

    TEACHER = StashKey[torch.nn.Module]("my_plugin.teacher", "the distillation teacher")

    @hookimpl
    def prepare_model(recipe, model, tokenizer, stash):
        stash[TEACHER] = load_teacher(recipe)

The keys ftcore documents for the built-ins' collaboration are in ``KEYS``
(see docs/plugins.md, "The stash"). A stash lives for one run (one
``ftcore run`` or one ``ftcore preprocess``); nothing in it outlives the run.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key of the stash. Identity matters, not the name: two keys with one name are different keys."""

    __slots__ = ("name", "doc")

    def __init__(self, name: str, doc: str = ""):
        self.name = name
        self.doc = doc

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    """A mapping from ``StashKey[T]`` to ``T`` for one run."""

    __slots__ = ("_values",)

    def __init__(self):
        self._values: dict[StashKey, Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._values[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"nothing in the run's stash under {key.name!r}") from None

    def get(self, key: StashKey[T], default: D = None) -> T | D:
        return self._values.get(key, default)

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return self._values.setdefault(key, default)

    def __contains__(self, key: StashKey) -> bool:
        return key in self._values

    def __delitem__(self, key: StashKey) -> None:
        del self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def names(self) -> list[str]:
        return sorted(key.name for key in self._values)


# ── the documented keys the built-ins share ─────────────────────────────────

#: The multimodal processor that came with the tokenizer (set by a plugin's
#: ``load_tokenizer``; read by its collator and ``save_artifacts``).
PROCESSOR: StashKey[Any] = StashKey("processor", "the multimodal processor whose tokenizer the run uses")

#: Tokens the recipe added (``special_tokens``, ``tokens``) that the vocabulary
#: lacked, in id order: their embeddings start untrained.
NEW_TOKENS: StashKey[list] = StashKey("new_tokens", "tokens added to the vocabulary by the recipe")

#: The ids of ``NEW_TOKENS`` once the embeddings are resized (``prepare_model``).
NEW_TOKEN_IDS: StashKey[list] = StashKey("new_token_ids", "ids of the tokens added to the vocabulary")

#: Module names an adapter should target when the recipe names none (a model
#: family's plugin sets it in ``prepare_model``).
ADAPTER_TARGETS: StashKey[list] = StashKey("adapter_targets", "default module names for an adapter")

#: A module-path regular expression adapters must stay inside (for example the
#: language model of a vision model whose vision tower is frozen).
ADAPTER_SCOPE: StashKey[str] = StashKey("adapter_scope", "module-path regex adapters stay inside")

#: Module-path regular expressions of parameters that stay frozen whatever the
#: adapter, full fine-tuning included (a vision model's tower and projector).
FROZEN_MODULES: StashKey[list] = StashKey("frozen_modules", "parameter-name regexes that never train")

#: Generated samples evaluators recorded (``EvalContext.record``), each a dict with
#: ``evaluator``, ``step``, ``phase``, ``prompt``, ``reference``, ``prediction`` and the
#: evaluator's own fields; the run writes them to ``samples.jsonl``.
EVAL_SAMPLES: StashKey[list] = StashKey("eval_samples", "generated samples the evaluators recorded")

KEYS = (PROCESSOR, NEW_TOKENS, NEW_TOKEN_IDS, ADAPTER_TARGETS, ADAPTER_SCOPE, FROZEN_MODULES, EVAL_SAMPLES)
