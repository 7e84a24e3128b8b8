"""Evaluation: run the recipe's evaluators on the validation split.

Evaluators are registered by plugins (``register_evaluators``) and chosen by
``evaluators:`` in the recipe (default ``[loss]``). The trainer calls
``run_evaluators`` at every evaluation point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


PHASES = ("initial", "training", "final")


def phase_of(step: int, max_steps: int | None) -> str:
    """``"initial"`` before the first step, ``"final"`` at the last, ``"training"`` between."""
    if step == 0:
        return "initial"
    if max_steps and step >= max_steps:
        return "final"
    return "training"


@dataclass
class EvalContext:
    """What an evaluator gets. ``batches()`` yields collated batches on the model's device.

    ``step`` is the optimizer step the evaluation happens after (0 before training), ``max_steps``
    the run's total, ``phase`` one of ``PHASES``: evaluators that are costly can run in full only at
    the ``"final"`` evaluation, or keep per-step state in the ``stash``.

    An evaluator that generates text keeps what it generated with :meth:`record`; the samples end up
    in the run folder's ``samples.jsonl`` (and ``eval.json`` for ``ftcore eval``), where the report
    shows them beside their references.
    """

    model: Any
    tokenizer: Any
    recipe: Any
    dataset: list
    collator: Callable
    batch_size: int
    device: Any = None
    stash: Any = None
    step: int = 0
    max_steps: int | None = None
    phase: str = "final"
    samples: list = field(default_factory=list)  # what evaluators recorded, tagged (see record)
    evaluator: str | None = None  # the name of the evaluator running now (set by run_evaluators)

    def record(self, prompt: str, reference: str, prediction: str, **fields) -> None:
        """Keep one generated sample: the prompt, the expected reply, the model's reply, and JSON-able
        extras (per-sample scores such as ``exact_match=1.0``, image references, ...)."""
        self.samples.append({"evaluator": self.evaluator, "step": self.step, "phase": self.phase,
                             "prompt": str(prompt), "reference": str(reference), "prediction": str(prediction),
                             **fields})

    def batches(self):
        for start in range(0, len(self.dataset), self.batch_size):
            yield self.on_device(self.collator(self.dataset[start:start + self.batch_size]))

    def on_device(self, batch: dict) -> dict:
        """A collated batch with its tensors moved to the model's device."""
        return {k: v.to(self.device) if hasattr(v, "to") and self.device is not None else v for k, v in batch.items()}

    def reduce_sum(self, *values):
        """Sum numbers over all processes (identity in a single process)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return values
        import torch

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tuple(tensor.tolist())


def run_evaluators(evaluators: dict, ctx: EvalContext, prefix: str = "eval") -> dict:
    """``{name: function}`` -> ``{"eval_<metric>": value}``; a metric reported twice is an error.

    Samples the evaluators record (``ctx.record``) stay in ``ctx.samples`` and are added to
    ``ctx.stash[EVAL_SAMPLES]`` when the context has a stash.
    """
    import torch

    from ftcore.errors import PluginError

    was_training = ctx.model.training
    ctx.model.eval()
    metrics, owner = {}, {}
    try:
        with torch.no_grad():
            for name, function in evaluators.items():
                ctx.evaluator = name
                for key, value in (function(ctx) or {}).items():
                    full = f"{prefix}_{key}"
                    if full in metrics:
                        raise PluginError(f"evaluators '{owner[full]}' and '{name}' both report '{key}'")
                    metrics[full], owner[full] = float(value), name
    finally:
        ctx.model.train(was_training)
        ctx.evaluator = None
        if ctx.stash is not None and ctx.samples:
            from ftcore.stash import EVAL_SAMPLES

            ctx.stash.setdefault(EVAL_SAMPLES, []).extend(ctx.samples)
    return metrics
