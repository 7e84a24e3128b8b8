"""Small, seeded rows and the files a test writes: Alpaca rows, chat rows, JSON lines, recipes.

The tiny tokenizers of the kit's fixtures are trained on ``corpus()``, which is
made of these rows, so the words in them tokenize into few tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` Alpaca rows (``instruction``, ``input``, ``output``): reverse three colour words."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        words = r.sample(COLORS, 3)
        rows.append({"instruction": "Reverse the words.", "input": " ".join(words),
                     "output": " ".join(reversed(words))})
    return rows


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``messages`` (user asks a sum, assistant answers); every other one has a system turn."""
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


def write_jsonl(path, rows) -> Path:
    """Write ``rows`` (dicts) to ``path`` as JSON lines; return the path."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(path, **keys) -> Path:
    """Write a recipe YAML from keyword arguments; return the path."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path


def corpus() -> list[str]:
    """The text the kit's tiny tokenizers are trained on: the words of ``alpaca_rows`` and ``chat_rows``."""
    lines = [" ".join(r.values()) for r in alpaca_rows(50)]
    lines += [m["content"] for r in chat_rows(50) for m in r["messages"]]
    return lines
