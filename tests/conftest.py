"""Shared fixtures: tiny models of real families, built once per session, and data writers."""

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def alpaca_rows(n, seed=0):
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        words = r.sample(COLORS, 3)
        rows.append({"instruction": "Reverse the words.", "input": " ".join(words),
                     "output": " ".join(reversed(words))})
    return rows


def chat_rows(n, seed=0):
    r = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = r.randint(0, 9), r.randint(0, 9)
        messages = [{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path, rows):
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def corpus():
    lines = [" ".join(r.values()) for r in alpaca_rows(50)]
    lines += [m["content"] for r in chat_rows(50) for m in r["messages"]]
    return lines


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny LlamaForCausalLM with a Llama 3 tokenizer (special tokens, chat template)."""
    from ftcore.tiny import build

    return build("llama3", tmp_path_factory.mktemp("models") / "tiny-llama", corpus(), vocab_size=512,
                 hidden=64, layers=2)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """A tiny Qwen2ForCausalLM with Qwen2.5's special tokens (ChatML, FIM)."""
    from ftcore.tiny import build

    return build("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen", corpus(), vocab_size=512,
                 hidden=64, layers=2)


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


def write_recipe(path, **keys):
    """Write a recipe YAML from keyword arguments."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_mllama(tmp_path_factory):
    """A tiny Llama 3.2 Vision (MllamaForConditionalGeneration) and its processor: 28-pixel tiles, 4 tiles."""
    from ftcore.tiny import build_mllama

    return build_mllama(tmp_path_factory.mktemp("models") / "tiny-mllama", corpus(), vocab_size=512,
                        hidden=64, layers=2)
