"""How close ``ftcore estimate`` comes to the measured peak memory of real ftcore training steps.

    python benchmarks/estimate.py                                  # the six runs of RUNS
    python benchmarks/estimate.py --runs small:lora,small:qlora    # a quick run
    python benchmarks/estimate.py --json results.json              # also keep the raw numbers

For each shape and method, one child process trains a few real ftcore steps (``ftcore.testing.run_recipe``:
the recipe's whole pipeline, the built-in plugins, transformers' Trainer) on a model of that shape with
random weights, saved once per shape to a temporary folder (bf16 safetensors and a small Llama 3 tokenizer;
nothing is downloaded):

- shapes: ``small`` (a Llama 3.2-like model: hidden 1024, intermediate 4096, 8 layers, 16 heads, 8 kv heads,
  head dim 64, vocab 128256, tied embeddings: 0.26 B parameters), ``mid`` (hidden 1536, intermediate 6144,
  12 layers, 24 heads: 0.61 B) and ``1b`` (exactly Llama 3.2 1B's config.json from ftcore's table: 1.24 B);
  by default LoRA and QLoRA at small and 1b, full fine-tuning at small and mid (``RUNS``);
- methods: ``lora`` (16-bit base, LoRA r=16 on every linear layer, dropout 0.05), ``qlora`` (the same on a
  4-bit nf4 base with double quantization), ``full`` (every weight trains);
- every run: ``bf16: auto`` (fp32 on a CPU: transformers' Trainer refuses bf16 without a GPU), sequence 256 (``type: pretrain`` chunks of exactly 256 tokens), micro batch 1,
  gradient checkpointing, ``chunked_cross_entropy: true``, ``optimizer: adamw_torch``, 3 steps.

Measured: the peak resident memory during training minus the resident memory after torch, transformers,
peft, bitsandbytes and ftcore are imported (before the model loads). A benchmark plugin's trainer callback
resets the kernel's peak (``/proc/self/clear_refs`` "5") when training begins, so loading's transient
copies are not counted, and reads ``VmHWM`` after every step. Each child runs with
``MALLOC_MMAP_THRESHOLD_=131072`` (see docs/memory.md: glibc's heaps otherwise keep freed blocks and RSS
creeps up with memory no tensor holds). The estimate is ``memory.estimate`` for the same recipe with the
CPU's rules (``Settings.from_recipe(recipe, device="cpu")``: no CUDA context).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import log, status_kib  # benchmarks/memory.py: the same /proc/self/status reader and stderr log

FTCORE_CONTRACT = "1"

SHAPES = {  # changes to Llama 3.2 1B's config; "1b" is that config itself
    "small": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=64),
    "mid": dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=12, num_attention_heads=24,
                num_key_value_heads=8, head_dim=64),
    "1b": {},
}
# Full fine-tuning trains in fp32 on a CPU (bf16: auto): 16 bytes a parameter with AdamW, 20 GB at the 1B
# shape, more than this 24 GiB machine shared by others can give; the mid shape (0.61 B) is the largest run.
RUNS = "small:lora,small:qlora,small:full,1b:lora,1b:qlora,mid:full"
METHODS = ("lora", "qlora", "full")
SEQ = 256
STEPS = 3


def shape_config(shape: str) -> dict:
    from ftcore.plugins.models import entries

    config = dict(dict(entries())["meta-llama/Llama-3.2-1B"]["config"])
    config.update(SHAPES[shape])
    return config


# ── preparing a shape's model folder (its own process) ──────────────────────


def prepare(shape: str, folder: str) -> None:
    import torch
    import transformers

    from ftcore.testing.tiny import train_tokenizer

    config = transformers.LlamaConfig(**{k: v for k, v in shape_config(shape).items() if k != "architectures"})
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.bfloat16).mul_(0.02))
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.tie_weights()
    model.to(torch.bfloat16)  # meta-device parameters are created fp32 whatever config.dtype says
    model.save_pretrained(folder)
    train_tokenizer("llama3", vocab_size=512).save_pretrained(folder)


# ── one training run (its own process) ───────────────────────────────────────

RESULT_ENV = "FTCORE_BENCH_RESULT"


class Measure:
    """A benchmark plugin: resets the peak when training begins and records it after every step."""

    @classmethod
    def plugin(cls):
        from ftcore.api import hookimpl
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self):
                self.begin_kib = None
                self.peaks = []

            def on_train_begin(self, args, state, control, **kwargs):
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # VmHWM := VmRSS now
                self.begin_kib = status_kib("VmRSS")

            def on_step_end(self, args, state, control, **kwargs):
                self.peaks.append(status_kib("VmHWM"))

            def on_train_end(self, args, state, control, **kwargs):
                self.peaks.append(status_kib("VmHWM"))
                Path(os.environ[RESULT_ENV]).write_text(json.dumps({"begin_kib": self.begin_kib,
                                                                    "peaks_kib": self.peaks}))

        class Plugin:
            FTCORE_CONTRACT = "1"

            @hookimpl
            def trainer_callbacks(self, recipe, register, stash):
                register(Callback())

        return Plugin()


def child(shape: str, method: str, folder: str, workdir: str) -> dict:
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import ftcore.api  # noqa: F401
    from ftcore.testing import fresh_plugins, run_recipe, write_jsonl

    torch.manual_seed(0)
    idle = status_kib("VmRSS")
    work = Path(workdir)
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly hum old songs".split()
    rows = [{"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(400))} for i in range(24)]
    data = write_jsonl(work / "data.jsonl", rows)
    recipe = {
        "base_model": folder, "datasets": [{"path": str(data), "type": "pretrain"}],
        "sequence_len": SEQ, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": STEPS,
        "learning_rate": 1e-4, "optimizer": "adamw_torch", "bf16": "auto", "gradient_checkpointing": True,
        "chunked_cross_entropy": True, "val_set_size": 0, "logging_steps": 1, "seed": 0,
        "output_dir": str(work / "run"),
    }
    if method != "full":
        recipe.update(adapter=method, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_linear=True)
    if method == "qlora":
        recipe.update(load_in_4bit=True, bnb_4bit_use_double_quant=True)
    os.environ[RESULT_ENV] = str(work / "measured.json")
    plugins = fresh_plugins(Measure.plugin())
    start = time.time()
    run = run_recipe(recipe, plugins=plugins)
    measured = json.loads((work / "measured.json").read_text())

    from ftcore.plugins.planning.memory import Settings, estimate

    config = json.loads((Path(folder) / "config.json").read_text())
    settings = Settings.from_recipe(run.recipe, device="cpu")
    result = estimate(config, settings)
    peak = max(measured["peaks_kib"]) - idle
    return {"shape": shape, "method": method, "idle_kib": idle, "begin_kib": measured["begin_kib"] - idle,
            "peak_kib": peak, "peaks_kib": [p - idle for p in measured["peaks_kib"]],
            "estimate_bytes": result.total_bytes, "breakdown": result.breakdown,
            "parameters": result.parameters, "trainable": result.trainable_parameters,
            "seconds": time.time() - start}


# ── the parent: folders, children, the table ────────────────────────────────


def _env():
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=RUNS, help=f"comma-separated SHAPE:METHOD, shapes {', '.join(SHAPES)}, "
                                                      f"methods {', '.join(METHODS)} (default {RUNS})")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    parser.add_argument("--prepare", nargs=2, metavar=("SHAPE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, metavar=("SHAPE", "METHOD", "FOLDER", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(*args.prepare)
        return 0
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    runs = [tuple(r.split(":")) for r in args.runs.split(",") if r]
    for run in runs:
        if len(run) != 2 or run[0] not in SHAPES or run[1] not in METHODS:
            parser.error(f"--runs: {':'.join(run)!r} is not SHAPE:METHOD ({', '.join(SHAPES)}; {', '.join(METHODS)})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftcore-bench-estimate-") as tmp:
        for shape, method in runs:
            folder = Path(tmp) / f"model-{shape}"
            if not folder.exists():
                log(f"{shape}: writing a random-weight model of the shape to {folder}")
                subprocess.run([sys.executable, __file__, "--prepare", shape, str(folder)], check=True, env=_env())
            work = Path(tmp) / f"{shape}-{method}"
            work.mkdir()
            log(f"{shape} {method}: training {STEPS} steps")
            proc = subprocess.run([sys.executable, __file__, "--child", shape, method, str(folder), str(work)],
                                  stdout=subprocess.PIPE, text=True, env=_env())
            if proc.returncode != 0:
                log(f"{shape} {method}: the child failed with exit code {proc.returncode}")
                rows.append({"shape": shape, "method": method, "failed": proc.returncode})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"{shape} {method}: measured {row['peak_kib'] / 2**20:.2f} GiB, estimated "
                f"{row['estimate_bytes'] / 2**30:.2f} GiB in {row['seconds']:.0f}s")
    print(f"\nLlama-shaped random-weight models, bf16, sequence {SEQ}, micro batch 1, {STEPS} steps, gradient "
          f"checkpointing, chunked loss, adamw_torch, CPU (RSS above the idle interpreter)\n")
    print("| shape | method | params | trainable | measured peak GiB | estimate GiB | estimate / measured |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        if "failed" in row:
            print(f"| {row['shape']} | {row['method']} | | | failed (exit {row['failed']}) | | |")
            continue
        measured = row["peak_kib"] * 1024
        print(f"| {row['shape']} | {row['method']} | {row['parameters'] / 1e9:.2f} B | {row['trainable'] / 1e6:.1f} M | "
              f"{measured / 2**30:.2f} | {row['estimate_bytes'] / 2**30:.2f} | {row['estimate_bytes'] / measured:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
