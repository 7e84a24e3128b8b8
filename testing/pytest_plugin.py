"""pytest fixtures of the ftcore plugin-author kit.

Registered through the ``pytest11`` entry point ``ftcore`` whenever ftcore is
installed, so a plugin's tests use them without a ``conftest.py``. None is
autouse, and importing this module does not import torch (models are built
only when a test asks for one). Disable with ``pytest -p no:ftcore``.

- ``ftcore_tiny_llama`` / ``ftcore_tiny_qwen`` / ``ftcore_tiny_mllama``: session-scoped
  folders with a tiny Llama 3 / Qwen2.5 / Llama 3.2 Vision (random weights, the
  family's real special tokens and chat template), built once per session.
- ``ftcore_plugins``: a fresh plugin manager for the test.
- ``ftcore_register(plugin, name=None)``: registers ``plugin`` (a module, an object
  with ``@hookimpl`` functions, or a module path) on the test's ``ftcore_plugins``
  manager and returns the manager.
- ``ftcore_env``: HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, TOKENIZERS_PARALLELISM=false,
  WANDB_MODE=disabled for the test.
"""

from __future__ import annotations

import pytest

from ftcore import testing as kit

#: The sizes of the fixtures' models (ftcore's own tests use the same ones).
TINY_SIZES = {"vocab_size": 512, "hidden": 64, "layers": 2}


@pytest.fixture(scope="session")
def ftcore_tiny_llama(tmp_path_factory):
    """A folder with a tiny LlamaForCausalLM and a Llama 3 tokenizer (special tokens, chat template)."""
    with kit.offline():
        return kit.build_tiny("llama3", tmp_path_factory.mktemp("models") / "tiny-llama", kit.corpus(),
                              **TINY_SIZES)


@pytest.fixture(scope="session")
def ftcore_tiny_qwen(tmp_path_factory):
    """A folder with a tiny Qwen2ForCausalLM and Qwen2.5's special tokens (ChatML, FIM)."""
    with kit.offline():
        return kit.build_tiny("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen", kit.corpus(),
                              **TINY_SIZES)


@pytest.fixture(scope="session")
def ftcore_tiny_mllama(tmp_path_factory):
    """A folder with a tiny Llama 3.2 Vision (MllamaForConditionalGeneration) and its processor: 28-pixel tiles, 4 tiles."""
    with kit.offline():
        return kit.build_tiny_mllama(tmp_path_factory.mktemp("models") / "tiny-mllama", kit.corpus(),
                                     **TINY_SIZES)


@pytest.fixture
def ftcore_plugins():
    """A fresh plugin manager (built-ins and installed plugins), for this test only."""
    return kit.fresh_plugins()


@pytest.fixture
def ftcore_register(ftcore_plugins):
    """``ftcore_register(plugin, name=None)`` -> this test's plugin manager, with ``plugin`` registered."""

    def register(plugin, name=None):
        return kit.add_plugin(ftcore_plugins, plugin, name)

    return register


@pytest.fixture
def ftcore_env(monkeypatch):
    """No Hub, no wandb, no tokenizers threads, for this test."""
    for key, value in kit.OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(kit.OFFLINE_ENV)
