"""Recipes: YAML in, a validated, read-only ``Recipe`` out.

- ``load.py``: reading YAML with OmegaConf, ``extends:``, ``key=value``
  overrides, safe interpolation.
- ``remote.py``: recipes from a URL pinned by ``#sha256=``, cached for offline use.
- ``rerun.py``: ``ftcore run RUN_DIR/recipe.yaml`` into a fresh folder; data changed since the run.
- ``schema.py``: the typed recipe in Axolotl's key language.
- ``validate.py``: schema + plugin sections + plugin checks, every error at once.
- ``suggest.py``: "did you mean" for typos.
"""

from ftcore.recipe.load import load_raw
from ftcore.recipe.validate import validate

__all__ = ["load_raw", "validate"]
