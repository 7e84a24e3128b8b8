"""Shared fixtures: tiny models of real families, built once per session, and data writers.

Both come from the plugin-author kit (``ftcore.testing``), so ftcore's own tests
use what a plugin's tests use: ``tiny_llama`` *is* the kit's ``ftcore_tiny_llama``
fixture (pytest plugin ``ftcore.testing.pytest_plugin``, registered by the
``pytest11`` entry point), and the rows and writers below are the kit's.
"""

import os

import pytest

from ftcore.testing import COLORS, OFFLINE_ENV, alpaca_rows, chat_rows, corpus, write_jsonl, write_recipe  # noqa: F401

for _key, _value in OFFLINE_ENV.items():  # HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TOKENIZERS_PARALLELISM, WANDB_MODE
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def tiny_llama(ftcore_tiny_llama):
    """A tiny LlamaForCausalLM with a Llama 3 tokenizer (special tokens, chat template)."""
    return ftcore_tiny_llama


@pytest.fixture(scope="session")
def tiny_qwen(ftcore_tiny_qwen):
    """A tiny Qwen2ForCausalLM with Qwen2.5's special tokens (ChatML, FIM)."""
    return ftcore_tiny_qwen


@pytest.fixture(scope="module")  # per module: formats set chat templates on them
def tokenizers(tiny_llama, tiny_qwen):
    """The tiny tokenizers: Llama 3, Qwen2.5, and Llama 3 with <|image|> as a Llama 3.2 Vision one has."""
    from transformers import AutoTokenizer

    vision = AutoTokenizer.from_pretrained(tiny_llama)
    vision.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    return {"llama": AutoTokenizer.from_pretrained(tiny_llama), "qwen": AutoTokenizer.from_pretrained(tiny_qwen),
            "llama_vision": vision}


@pytest.fixture
def llama(tokenizers):
    return tokenizers["llama"]


@pytest.fixture
def qwen(tokenizers):
    return tokenizers["qwen"]


@pytest.fixture
def llama_vision(tokenizers):
    return tokenizers["llama_vision"]


@pytest.fixture
def alpaca_file(tmp_path):
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(48))


@pytest.fixture
def chat_file(tmp_path):
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(48))


@pytest.fixture(scope="session")
def tiny_mllama(ftcore_tiny_mllama):
    """A tiny Llama 3.2 Vision (MllamaForConditionalGeneration) and its processor: 28-pixel tiles, 4 tiles."""
    return ftcore_tiny_mllama


# ── the two layers: unit tests, and end-to-end ones ──────────────────────────
# A test is end-to-end (marker `e2e`) when it is marked `slow` (a whole run), needs a tiny model
# (built once per session: seconds), or starts ftcore in another process. `-m "not e2e"` is the fast
# unit layer; CI runs both.

# modules whose tests start processes by design: the code sandbox, launchers, installed packages
PROCESS_MODULES = {"test_sandbox", "test_distributed", "test_example_plugin"}
MODEL_FIXTURES = {"tiny_llama", "tiny_qwen", "tiny_mllama", "tokenizers", "llama", "qwen", "llama_vision",
                  "ftcore_tiny_llama", "ftcore_tiny_qwen", "ftcore_tiny_mllama"}


def _starts_processes(item) -> bool:
    import inspect

    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    return item.module.__name__ in PROCESS_MODULES or any(
        word in source for word in ("subprocess", "cli(", "_ftcore(", "getfixturevalue", "score(", "evaluate_code("))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords or MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) \
                or _starts_processes(item):
            item.add_marker(pytest.mark.e2e)
