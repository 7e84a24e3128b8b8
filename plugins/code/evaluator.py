"""The ``code_exec`` evaluator: pass@k of generated code run in a sandbox.

Selected with ``evaluators: [loss, code_exec]`` and set up in the recipe's own
``code_exec:`` section (``CodeExecSection``). At the evaluations ``at`` names
(``AT``: ``start`` before training, with ``eval_on_start``; ``steps`` during it;
``end`` after it; by default ``start`` and ``end``) it reads a HumanEval-format
problem file (one JSON object per line with ``task_id``, ``prompt``, ``test``,
``entry_point``), generates ``n`` completions of each prompt (greedy for
``n: 1``, sampled otherwise; ``batch_size`` prompts at a time), cuts each at the
first stop sequence (``STOP`` and the tokenizer's end tokens; generation stops
once every completion has one), runs ``prompt + completion + test +
check(entry_point)`` in the sandbox (``sandbox.py``) and reports the unbiased
pass@k of Chen et al. 2021 for every ``k``, averaged over problems, as
``eval_code_pass@K``.

Without ``problems`` it uses the small set shipped with ftcore
(``recipes/code/problems.jsonl``, package data of ``ftcore.recipes``).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ftcore.api import DataError, RecipeKeys

from .sandbox import run_python

# Where a completion of a function body ends: the next top-level statement (HumanEval's convention).
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|fim_pad|>", "<|file_sep|>")
REQUIRED = ("task_id", "prompt", "test", "entry_point")
# The evaluation's phase (``EvalContext.phase``) -> the ``code_exec.at`` name that selects it.
AT = {"initial": "start", "training": "steps", "final": "end"}


def shipped_problems() -> Path:
    """ftcore's small problem set."""
    return Path(str(files("ftcore.recipes") / "code" / "problems.jsonl"))


class CodeExecSection(RecipeKeys):
    """The ``code_exec:`` recipe section."""

    problems: str | None = Field(None, description="HumanEval-format JSONL file (default: ftcore's small set)")
    n: int = Field(1, ge=1, description="completions per problem")
    k: list[int] = Field(default_factory=lambda: [1], description="report pass@k for each k (each <= n)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature when n > 1 (n = 1 is greedy)")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(16, ge=1, description="prompts generated together")
    max_problems: int | None = Field(None, ge=1, description="evaluate only the first problems")
    stop: list[str] = Field(default_factory=list, description="stop sequences besides the usual ones")
    timeout: float = Field(10.0, gt=0, description="wall-clock seconds per program")
    memory_mb: int = Field(1024, ge=64, description="address-space limit per program")
    max_output_kb: int = Field(64, ge=1, description="a program printing more fails")
    at: list[Literal["start", "steps", "end"]] = Field(
        default_factory=lambda: ["start", "end"],
        description="which evaluations run it: before training (eval_on_start), during, after")

    @model_validator(mode="after")
    def _k_within_n(self):
        bad = [k for k in self.k if not 1 <= k <= self.n]
        if bad or not self.k:
            raise ValueError(f"k must be a non-empty list of numbers from 1 to n ({self.n}); got {self.k}")
        return self


def load_problems(path) -> list[dict]:
    """The problems of a HumanEval-format file; ``DataError`` naming the file, line and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"code_exec.problems: {path}: no such file")
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: malformed JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object")
        missing = [key for key in REQUIRED if not isinstance(row.get(key), str)]
        if missing:
            raise DataError(f"{path}: line {number}: needs string fields {', '.join(REQUIRED)}; "
                            f"missing or not text: {', '.join(missing)}")
        problems.append(row)
    if not problems:
        raise DataError(f"{path}: holds no problems")
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` pass: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def truncate(completion: str, stops) -> str:
    """``completion`` up to the first stop sequence."""
    cut = len(completion)
    for stop in stops:
        at = completion.find(stop)
        if at != -1:
            cut = min(cut, at)
    return completion[:cut]


def program(problem: dict, completion: str) -> str:
    """What runs: the prompt, the completion, the tests, and the call of ``check``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def score(problems, completions, settings) -> tuple[list[int], list]:
    """Run every completion; ``(passes per problem, sandbox results per problem)``."""
    passes, results = [], []
    for problem, outs in zip(problems, completions):
        runs = [run_python(program(problem, out), timeout=settings.timeout, memory_mb=settings.memory_mb,
                           max_output=settings.max_output_kb * 1024) for out in outs]
        passes.append(sum(r.passed for r in runs))
        results.append(runs)
    return passes, results


def pass_at_k_sums(n: int, passes, ks) -> list[float]:
    """For each k, pass@k summed over problems (each with ``n`` completions, ``passes[i]`` passing)."""
    return [sum(pass_at_k(n, c, k) for c in passes) for k in ks]


def metrics(n: int, passes, ks) -> dict:
    """Mean pass@k over problems: ``{"code_pass@K": value}``."""
    return {f"code_pass@{k}": total / len(passes) for k, total in zip(ks, pass_at_k_sums(n, passes, ks))}


def generate(model, tokenizer, prompts: list, settings, seed: int, device=None) -> list[list[str]]:
    """``settings.n`` completions of each prompt, each cut at its first stop sequence.

    The prompts go through ``generate`` together (left-padded); generation stops early once every
    completion has reached a stop sequence.
    """
    import torch

    if tokenizer.pad_token is None and len(prompts) > 1:  # nothing to pad with: one prompt at a time
        return [generate(model, tokenizer, [prompt], settings, seed + i, device)[0] for i, prompt in enumerate(prompts)]
    vocab = tokenizer.get_vocab()
    end_ids = sorted({vocab[t] for t in END_TOKENS if t in vocab} | ({tokenizer.eos_token_id}
                                                                     if tokenizer.eos_token_id is not None else set()))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (end_ids or [0])[0]
    side = tokenizer.padding_side
    try:
        tokenizer.padding_side = "left"  # new tokens start at the same position in every row
        inputs = tokenizer(prompts, return_tensors="pt", padding=tokenizer.pad_token is not None)
    finally:
        tokenizer.padding_side = side
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    stops = [*STOP, *settings.stop]
    sample = settings.n > 1
    options = dict(max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.n, do_sample=sample,
                   eos_token_id=end_ids or None, pad_token_id=pad_id, use_cache=True, stop_strings=stops,
                   tokenizer=tokenizer)
    if sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[]):  # the training's random state is left as it was
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        output = model.generate(**inputs, **options)
    start = inputs["input_ids"].shape[1]
    texts = tokenizer.batch_decode(output[:, start:], skip_special_tokens=False)
    ends = (*stops, *END_TOKENS, *([tokenizer.eos_token] if tokenizer.eos_token else []))
    cut = [truncate(text, ends) for text in texts]
    return [cut[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]  # rows come n per prompt


def _share(items):
    """This process's share of ``items`` under torch.distributed (all of them otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return items[dist.get_rank()::dist.get_world_size()]
    return items


def evaluate_code(ctx) -> dict:
    """The ``code_exec`` evaluator: ``{"code_pass@K": ..., "code_problems": ...}``, or nothing at a phase
    ``code_exec.at`` leaves out."""
    settings = ctx.recipe.section("code_exec") or CodeExecSection()
    if AT[ctx.phase] not in settings.at:
        return {}
    problems = load_problems(settings.problems or shipped_problems())[: settings.max_problems]
    mine = _share(list(enumerate(problems)))
    completions = []
    for start in range(0, len(mine), settings.batch_size):
        batch = mine[start:start + settings.batch_size]  # seeded by the first problem's place in the file
        completions += generate(ctx.model, ctx.tokenizer, [p["prompt"] for _, p in batch], settings,
                                ctx.recipe.seed + batch[0][0], ctx.device)
    passes, _results = score([p for _, p in mine], completions, settings)
    *sums, count = ctx.reduce_sum(*pass_at_k_sums(settings.n, passes, settings.k), len(passes))  # over processes
    out = {f"code_pass@{k}": total / max(count, 1) for k, total in zip(settings.k, sums)}
    out["code_problems"] = count
    return out
