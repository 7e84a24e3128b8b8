"""Plan before you pay: what a recipe will need, before anything is downloaded.

- ``memory.py``: the arithmetic of a run's memory per GPU (weights, adapter, gradients, optimizer
  states, activations, logits, overhead) from a model's architecture facts; no torch.
- ``estimate.py``: the ``ftcore estimate RECIPE`` command (a breakdown, a verdict, suggestions).
- ``init.py``: the ``ftcore init --task ...`` command (a starter recipe that fits the GPU).
- ``dry_run.py``: ``ftcore run RECIPE --dry-run`` (a tiny model of the same architecture through the
  real pipeline, on the CPU, in under a minute).

The models' facts (architecture, license, gating) come from the ``register_models`` hook
(``ftcore.api.registered_models``); the built-in ``models`` plugin registers the seed's models.
Importing this package imports neither torch nor transformers.
"""

from ftcore.api import hookimpl

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def register_commands(register):
    from . import estimate, init

    register("estimate", estimate.HELP, estimate.configure, estimate.handle)
    register("init", init.HELP, init.configure, init.handle)


# dry run hooks (dry_run.py): imported here so the plugin manager sees them on this package
from .dry_run import rehearse_run  # noqa: E402,F401  (the dry_run hook: ftcore run --dry-run)
