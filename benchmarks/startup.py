"""Start-up benchmark: seconds from launch to the end of the first training step.

    python benchmarks/startup.py [--repeats 3]

Compares `ftcore run` (LoRA on a ~4 M-parameter Llama, 200 alpaca rows) with a
plain PyTorch + transformers + peft script doing the same work by hand: load
the tokenizer and model, tokenize, wrap with LoRA, one optimizer step. Each
command runs in a fresh process; the table gives medians and the ratio to the
plain script. Everything is built locally; nothing is downloaded. A second
table times the commands that never import torch (`ftcore --help`,
`ftcore validate`, `ftcore estimate`, `ftcore init`) against a bare Python start.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PLAIN = textwrap.dedent("""
    import json, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model
    model_dir, data = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(l) for l in open(data)]
    texts = [r["instruction"] + "\\n" + r["input"] + "\\n" + r["output"] + tok.eos_token for r in rows]
    batch = tok(texts[:4], return_tensors="pt", padding=True) if tok.pad_token else None
    if batch is None:
        tok.pad_token = tok.eos_token
        batch = tok(texts[:4], return_tensors="pt", padding=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward(); opt.step()
    print("FIRST_STEP", time.time())
""")

CALLBACK_PLUGIN = textwrap.dedent("""
    import time
    from ftcore import hookimpl
    FTCORE_CONTRACT = "1"

    @hookimpl
    def trainer_callbacks(recipe, register):
        from transformers import TrainerCallback

        class FirstStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                print("FIRST_STEP", time.time(), flush=True)
                control.should_training_stop = True

        register(FirstStep())
""")


def first_step_seconds(command, cwd, env=None):
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{done.stderr[-2000:]}")
    stamp = next(float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("FIRST_STEP"))
    return stamp - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import os

    from ftcore.testing.tiny import build, quickstart_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = quickstart_rows()[:200]
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        corpus = [" ".join(r.values()) for r in rows]
        model = build("llama3", tmp / "model", corpus, vocab_size=1024, hidden=256, layers=6, intermediate=512)
        (tmp / "plain.py").write_text(PLAIN)
        (tmp / "first_step_plugin.py").write_text(CALLBACK_PLUGIN)
        (tmp / "recipe.yaml").write_text(
            f"base_model: {model}\ndatasets:\n  - path: {data}\n    type: alpaca\nadapter: lora\n"
            f"lora_target_linear: true\nmicro_batch_size: 4\nsequence_len: 512\nmax_steps: 5\n"
            f"output_dir: {tmp / 'out'}\nplugins: [first_step_plugin]\n")
        env = {**os.environ, "PYTHONPATH": str(tmp)}
        commands = {
            "plain script": [sys.executable, str(tmp / "plain.py"), str(model), str(data)],
            "ftcore run": [sys.executable, "-m", "ftcore", "run", str(tmp / "recipe.yaml"), "--overwrite"],
        }
        results = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():  # interleaved, so load drifts hit both
                results[name].append(first_step_seconds(command, tmp, env))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        n = (config.vocab_size * config.hidden_size * 2 + config.num_hidden_layers *
             (2 * config.hidden_size ** 2 + 2 * config.hidden_size * config.hidden_size // 2 +
              3 * config.hidden_size * config.intermediate_size))
        print(f"model: Llama, {n / 1e6:.1f} M parameters; {args.repeats} runs each, seconds to the first step")
        print(f"{'command':<14} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}")
        base = statistics.median(results["plain script"])
        for name, values in results.items():
            median = statistics.median(values)
            print(f"{name:<14} {median:8.2f} {min(values):8.2f} {max(values):8.2f} {median / base:7.2f}")
        commands_without_torch(tmp, args.repeats)


def commands_without_torch(tmp, repeats):
    """Seconds for the commands that never import torch, against a bare ``python -c pass``."""
    quick = {"python -c pass": [sys.executable, "-c", "pass"],
             "ftcore --help": [sys.executable, "-m", "ftcore", "--help"],
             "ftcore validate": [sys.executable, "-m", "ftcore", "validate", str(tmp / "recipe.yaml")],
             "ftcore estimate": [sys.executable, "-m", "ftcore", "estimate", "llama31-qlora", "--gpu-memory", "24GiB"],
             "ftcore init": [sys.executable, "-m", "ftcore", "init", "--task", "chat", "--gpu-memory", "24GiB",
                             "--out", "-"]}
    times = {name: [] for name in quick}
    for _ in range(max(repeats, 5)):
        for name, command in quick.items():
            start = time.perf_counter()
            subprocess.run(command, cwd=tmp, capture_output=True, check=False, env={**__import__("os").environ,
                                                                                    "PYTHONPATH": str(tmp)})
            times[name].append(time.perf_counter() - start)
    print(f"\n{'command':<16} {'median s':>9} {'ratio':>7}   (no torch import; target: under 1 s)")
    base = statistics.median(times["python -c pass"])
    for name, values in times.items():
        print(f"{name:<16} {statistics.median(values):9.2f} {statistics.median(values) / base:7.2f}")


if __name__ == "__main__":
    main()
