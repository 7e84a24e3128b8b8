"""ftcore-neftune: NEFTune (noisy embeddings) for ftcore, an example third-party plugin.

NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction
Finetuning") adds uniform noise to the input embeddings during training only:
for a batch of shape ``[rows, L, d]`` (``L`` the batch's sequence length, ``d``
the hidden size) every component gets ``U(-s, s)`` with ``s = alpha / sqrt(L * d)``,
so each token's embedding moves by about ``alpha / sqrt(3 * L)`` in norm.
Evaluation and generation see the model unchanged.

What it uses of ftcore (only ``ftcore.api``):

- ``recipe_keys``: the flat Axolotl key ``neftune_noise_alpha`` (off when absent);
- ``recipe_sections``: ``neftune: {seed}``, the seed of the noise's own generator;
- ``validate_recipe``: refuses settings that would do nothing (the section or the
  evaluator without ``neftune_noise_alpha``);
- ``trainer_callbacks``: a callback whose ``on_train_begin`` hooks the *trained*
  model's input embeddings (after the adapter, which may wrap or copy them);
- ``register_evaluators``: ``neftune_noise``, the noise of the last training step;
- ``run_finished``: removes the hook, however the run ended.

State between those hooks (the hook's handle, the last noise measured) lives
in the run's stash under this plugin's own keys. The noise comes from a
generator of its own, so turning NEFTune on draws nothing from torch's global
random numbers: data order and dropout stay those of the run without it.

Nothing heavy is imported at module level: ftcore imports every installed
plugin whenever the ``ftcore`` command starts.
"""

from __future__ import annotations

import math
import os

from pydantic import Field

from ftcore.api import FtcoreError, RecipeKeys, StashKey, hookimpl

FTCORE_CONTRACT = "1"  # the major version of ftcore's hook contract this plugin is written for

SECTION = "neftune"
EVALUATOR = "neftune_noise"

# ── recipe keys ─────────────────────────────────────────────────────────────


class NEFTuneKeys(RecipeKeys):
    """The flat key, in Axolotl's name (Axolotl's recipes run unchanged)."""

    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: add uniform noise scaled by alpha / sqrt(sequence length x hidden size) "
                                "to the input embeddings while training (the paper uses 5 to 15); absent: off")


class NEFTuneSection(RecipeKeys):
    """The ``neftune:`` section."""

    seed: int | None = Field(None, description="seed of the noise's own random generator (each process adds its "
                                               "rank); default: the recipe's seed")


@hookimpl
def recipe_keys(register):
    register(NEFTuneKeys)


@hookimpl
def recipe_sections(register):
    register(SECTION, NEFTuneSection)


@hookimpl
def validate_recipe(recipe, error):
    if recipe.neftune_noise_alpha is not None:
        return  # any model with input embeddings works; a model without them is reported when training starts
    off = "neftune_noise_alpha is not set (NEFTune is off); set it (e.g. neftune_noise_alpha: 5) or remove"
    if recipe.is_set(SECTION):
        error(SECTION, f"has no effect: {off} the {SECTION} section")
    if EVALUATOR in recipe.evaluators:
        error("evaluators", f"'{EVALUATOR}' measures NEFTune's noise, but {off} '{EVALUATOR}'")


def noise_seed(recipe) -> int:
    """The noise generator's seed in this process: the section's seed (or the recipe's) plus the rank."""
    seed = recipe.section(SECTION).seed
    return (recipe.seed if seed is None else seed) + int(os.environ.get("RANK", "0"))


# ── the noise ───────────────────────────────────────────────────────────────

#: The forward hook's handle on the input embeddings, from ``on_train_begin`` to ``run_finished``.
HOOK: StashKey = StashKey("neftune.hook", "RemovableHandle of the noise hook on the input embeddings")

#: What the last training forward added: ``(mean noise norm per token, a 0-d tensor; sequence length L)``.
LAST_NOISE: StashKey[tuple] = StashKey("neftune.last_noise", "(mean per-token noise norm, L) of the last forward")


def noise_scale(alpha: float, length: int, hidden: int) -> float:
    """``s`` of ``U(-s, s)``: ``alpha / sqrt(L * d)``."""
    return alpha / math.sqrt(length * hidden)


def expected_norm(alpha: float, length: int) -> float:
    """The norm a token's noise vector has on average: ``sqrt(d * s**2 / 3) = alpha / sqrt(3 * L)``."""
    return alpha / math.sqrt(3 * length)


class NoisyEmbeddings:
    """A forward hook for the input embeddings: adds the noise while the module is in training mode."""

    def __init__(self, alpha: float, seed: int, stash):
        self.alpha, self.seed, self.stash = alpha, seed, stash
        self.generators = {}  # device -> torch.Generator, seeded once

    def generator(self, device):
        import torch

        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    def __call__(self, module, args, output):
        if not module.training:
            return None  # evaluation, generation: the output unchanged
        length, hidden = output.shape[-2], output.shape[-1]
        scale = noise_scale(self.alpha, length, hidden)
        noise = output.new_empty(output.shape).uniform_(-scale, scale, generator=self.generator(output.device))
        # kept as a tensor: no device synchronisation per step; the evaluator reads it
        self.stash[LAST_NOISE] = (noise.detach().float().norm(dim=-1).mean(), length)
        return output + noise


def install(model, alpha: float, seed: int, stash):
    """Hook ``model``'s input embeddings; the handle goes to ``stash[HOOK]``. Once per run."""
    if HOOK in stash:
        return stash[HOOK]
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        raise FtcoreError(f"neftune_noise_alpha: the model ({type(model).__name__}) has no input embeddings "
                          "(get_input_embeddings()) to add noise to; remove neftune_noise_alpha for this model")
    stash[HOOK] = embeddings.register_forward_hook(NoisyEmbeddings(alpha, seed, stash))
    return stash[HOOK]


def remove(stash) -> None:
    """Remove the hook, if one is installed."""
    handle = stash.get(HOOK)
    if handle is not None:
        handle.remove()
        del stash[HOOK]


# ── the run: a callback installs the hook, run_finished removes it ──────────


def noise_callback(recipe, stash):
    """The ``TrainerCallback`` that hooks the model being trained when training begins."""
    from transformers import TrainerCallback

    alpha, seed = recipe.neftune_noise_alpha, noise_seed(recipe)

    class NEFTuneCallback(TrainerCallback):
        # on_train_begin gets the model as trained: after inject_adapter, which may wrap the embeddings
        # (a LoRA on embed_tokens) or train a copy of them (modules_to_save); prepare_model is too early
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            install(model, alpha, seed, stash)

    return NEFTuneCallback()


@hookimpl
def trainer_callbacks(recipe, register, stash):
    if recipe.neftune_noise_alpha is not None:
        register(noise_callback(recipe, stash))


@hookimpl
def run_finished(stash):
    remove(stash)  # completed, failed or interrupted: the model the run returns carries no hook


# ── evaluator ``neftune_noise`` ─────────────────────────────────────────────


def neftune_noise(ctx):
    """The noise of the last training forward: its mean norm per token, and what the formula expects.

    Nothing before the first training step (``eval_on_start``).
    """
    last = ctx.stash.get(LAST_NOISE) if ctx.stash is not None else None
    if last is None:
        return {}
    norm, length = last
    total, expected, count = ctx.reduce_sum(float(norm), expected_norm(ctx.recipe.neftune_noise_alpha, length), 1)
    return {"neftune_noise_norm": total / count, "neftune_noise_norm_expected": expected / count}


@hookimpl
def register_evaluators(register):
    register(EVALUATOR, neftune_noise)
