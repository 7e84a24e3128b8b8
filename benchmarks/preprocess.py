"""Preprocessing benchmark: examples per second tokenizing and masking alpaca-style rows.

    python benchmarks/preprocess.py [--rows 50000] [--repeats 3] [--vocab 8192]

Measures ``load_or_prepare`` (what ``ftcore run`` and ``ftcore preprocess``
call) on the same rows in four modes, each in a fresh process with the
tokenizer already loaded, so the numbers are the data path alone:

- cold, no cache: ``dataset_prepared_path`` unset (read, format, tokenize, mask);
- cold, writing the cache: the same plus hashing the inputs and writing the entry;
- warm, cache hit: hashing the inputs and loading the entry (no row is tokenized);
- cold, ``dataset_processes: 2``: formatting and tokenizing in two worker processes.

The rows are synthetic alpaca rows (instruction, optional input, output, of
mixed lengths); the tokenizer is a byte-level BPE trained on them with Llama 3's
special tokens (``ftcore.testing.tiny``), so nothing is downloaded. Modes are
interleaved across repeats so that load from other processes hits all of them;
the table gives medians. Not a test: the numbers depend on the machine.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the a of to and in is it that for on with as be by this are from or an at which not but have "
         "write explain list give describe summarize translate sort count reverse classify rewrite answer "
         "question sentence paragraph word number list item story poem email code function python data "
         "table value result error reason example answer short long simple clear polite formal friendly "
         "red green blue cat dog tree river city country history science music language model computer "
         "water energy light time year day people world health food market school book letter").split()

MODES = {
    "cold, no cache": {},
    "cold, writing the cache": {"cache": True},
    "warm, cache hit": {"cache": True, "warm": True},
    "cold, dataset_processes=2": {"dataset_processes": 2},
}

WORKER = """
import json, sys, time, shutil
from pathlib import Path
config = json.loads(sys.argv[1])
from transformers import AutoTokenizer
from ftcore import hooks
from ftcore.data.cache import load_or_prepare
from ftcore.data.prepare import set_chat_template
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
plugins = load_plugins()
tokenizer = AutoTokenizer.from_pretrained(config["tokenizer"])
keys = {"base_model": config["tokenizer"], "datasets": [{"path": config["data"], "type": "alpaca"}],
        "sequence_len": 2048, "dataset_prepared_path": config.get("prepared"),
        "dataset_processes": config.get("dataset_processes")}
recipe = validate(RawRecipe(keys, None), plugins)
formats = hooks.dataset_formats(plugins)
template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
if config.get("prepared") and not config.get("warm"):
    shutil.rmtree(config["prepared"], ignore_errors=True)
import os
before, start = os.times(), time.perf_counter()
data = load_or_prepare(recipe, tokenizer, formats, template)
seconds, after = time.perf_counter() - start, os.times()
main_cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system"))
workers_cpu = sum(getattr(after, k) - getattr(before, k) for k in ("children_user", "children_system"))
cpu = main_cpu + workers_cpu
size = sum(p.stat().st_size for p in Path(config["prepared"]).rglob("*") if p.is_file()) if config.get("prepared") else 0
print("RESULT " + json.dumps({"seconds": seconds, "cpu": cpu, "main_cpu": main_cpu, "workers_cpu": workers_cpu, "examples": len(data.train), "tokens": data.stats["train"]["tokens"],
                              "reused": data.stats.get("cache", {}).get("reused"), "bytes": size}))
"""


def alpaca_rows(n, seed=0):
    r = random.Random(seed)

    def text(lo, hi):
        return " ".join(r.choice(WORDS) for _ in range(r.randint(lo, hi))).capitalize() + "."

    rows = []
    for _ in range(n):
        row = {"instruction": text(5, 30), "output": text(10, 200)}
        if r.random() < 0.4:
            row["input"] = text(5, 80)
        rows.append(row)
    return rows


def measure(config):
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the worker failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary size")
    args = parser.parse_args()

    from ftcore.testing.tiny import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = alpaca_rows(args.rows)
        data = tmp / "alpaca.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        corpus = [" ".join(r.values()) for r in rows[:5000]]
        train_tokenizer("llama3", corpus, vocab_size=args.vocab).save_pretrained(tmp / "tokenizer")
        base = {"tokenizer": str(tmp / "tokenizer"), "data": str(data)}

        results = {name: [] for name in MODES}
        cpu = {name: [] for name in MODES}
        split_cpu = {name: [] for name in MODES}
        info = {}
        for _ in range(args.repeats):
            for name, mode in MODES.items():
                config = dict(base)
                if mode.get("cache"):
                    config["prepared"] = str(tmp / "prepared")
                    if mode.get("warm") and not (tmp / "prepared").exists():
                        measure({**config})  # make the entry the warm run reads
                    config["warm"] = bool(mode.get("warm"))
                if mode.get("dataset_processes"):
                    config["dataset_processes"] = mode["dataset_processes"]
                result = measure(config)
                assert result["reused"] is (True if mode.get("warm") else False if mode.get("cache") else None), result
                results[name].append(result["seconds"])
                cpu[name].append(result["cpu"])
                split_cpu[name].append((result["main_cpu"], result["workers_cpu"]))
                info[name] = result

        examples = info["cold, no cache"]["examples"]
        tokens = info["cold, no cache"]["tokens"]
        print(f"{args.rows:,} alpaca-style rows -> {examples:,} examples, {tokens:,} tokens "
              f"({tokens / examples:.0f} per example); byte-level BPE, {args.vocab:,} tokens, Llama 3 specials; "
              f"{os.cpu_count()} CPU cores; median of {args.repeats} runs, each in a fresh process")
        print(f"cache entry on disk: {info['warm, cache hit']['bytes'] / 1e6:.1f} MB")
        load = os.getloadavg()[0]
        print(f"load average when done: {load:.1f} (other processes on the machine slow every mode; "
              f"'cpu s' is the CPU time the mode itself used, worker processes included)")
        print(f"{'mode':<28} {'seconds':>8} {'min':>7} {'max':>7} {'cpu s':>7} {'examples/s':>11} {'vs cold':>8}")
        cold = statistics.median(results["cold, no cache"])
        for name, values in results.items():
            median = statistics.median(values)
            print(f"{name:<28} {median:8.2f} {min(values):7.2f} {max(values):7.2f} {statistics.median(cpu[name]):7.2f} "
                  f"{examples / median:11,.0f} {cold / median:7.2f}x")
        main_cpu = statistics.median(m for m, _ in split_cpu["cold, dataset_processes=2"])
        workers_cpu = statistics.median(w for _, w in split_cpu["cold, dataset_processes=2"])
        bound = max(main_cpu, (main_cpu + workers_cpu) / 2)  # all the CPU time, spread over 2 cores at best
        print(f"dataset_processes=2: main process {main_cpu:.2f} s CPU, the two workers {workers_cpu:.2f} s together; "
              f"on two otherwise idle cores it would take at best {bound:.1f} s ({cold / bound:.2f}x cold)")


if __name__ == "__main__":
    main()
