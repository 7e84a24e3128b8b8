"""How many of Axolotl's own example recipes ftcore accepts, why it refuses the rest, and whether they train.

    python benchmarks/axolotl_recipes.py                      # validate every recipe (~2-3 min on 2 cores)
    python benchmarks/axolotl_recipes.py --json results.json  # also keep the per-recipe results
    python benchmarks/axolotl_recipes.py --run 3              # and train 3 accepted recipes on a tiny model
    python benchmarks/axolotl_recipes.py --cache DIR --top 40 --jobs 2

The corpus is the ``examples/`` folder of Axolotl 0.21.0's release sdist from PyPI (``axolotl-0.21.0.tar.gz``,
its sha256 is checked): every ``.yml``/``.yaml`` under ``examples/`` except ``examples/archived/`` (retired
recipes) and ``examples/cloud/`` (Modal/Baseten launcher settings, not recipes). The first run downloads the
sdist (about 5 MB) into the cache folder (default ``~/.cache/ftcore/axolotl-0.21.0``) and unpacks the recipes
there; later runs work offline. Nothing is copied into the repository.

Validate (always): each recipe goes through ``python -m ftcore validate --log-format plain`` of the Python running
this script, with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1`` (a model or dataset that is
not in the local cache is a note, not an error), from an empty working folder, 60 s each, ``--jobs`` at a time.
Each recipe is classified from its YAML:

- category: ``preference`` if ``rl`` is set or ``reward_model`` / ``process_reward_model`` is true,
  ``pretrain`` if ``pretraining_dataset`` is set, else ``sft``;
- family: from ``base_model`` (``FAMILIES``: first pattern that matches); "main families" in the table are
  llama, mistral, qwen, gemma, phi, deepseek;
- multimodal: ``processor_type`` / ``is_multimodal`` set, or the model or file name says vision, VL, audio, ...;
- status: ``accepted`` (exit code 0), ``rejected`` (the problems ``validate`` listed), ``network_only``
  (rejected, but every problem is about reaching the Hub: not counted as rejected), ``crashed`` (a Python
  traceback in the output), ``timeout``.

The table counts the statuses overall, per category, for sft, for sft of the main families (and of those the
text-only ones), and per family; then the keys named by the rejections, how many recipes each appears in and in
how many it is the only reason.

``--run N`` then trains up to N accepted, text-only sft recipes of the llama, qwen and mistral families (in
file-name order) with ``python -m ftcore run``: ``base_model`` is replaced by a tiny random Llama 3 (llama,
mistral) or Qwen 2 (qwen) model built once into the cache (``ftcore.testing.tiny``), every dataset by 48
generated rows of its ``type`` (alpaca rows; ``chat_template`` / ``sharegpt`` conversations under the recipe's
own field and role names; ``text`` rows for completion/pretrain), ``max_steps: 2``, ``sequence_len`` at most
512, the Hub, W&B, DeepSpeed and FSDP keys removed, the output in a temporary folder. It prints the exit code
and seconds of each run and the last lines of any that failed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

VERSION = "0.21.0"
SDIST = f"axolotl-{VERSION}.tar.gz"
SHA256 = "8ffe32db155c764775c5cd3864621065d7cbdb07f04ce006dacf543fee2ae257"
PYPI = "https://pypi.org"
SKIPPED_DIRS = ("examples/archived/", "examples/cloud/")
TIMEOUT = 60
MAIN_FAMILIES = ("llama", "mistral", "qwen", "gemma", "phi", "deepseek")
RUN_FAMILIES = {"llama": "llama3", "mistral": "llama3", "qwen": "qwen2"}  # family -> tiny model it trains on

FAMILIES = [  # (family, regex on base_model lower-cased): the first match wins
    ("deepseek", r"deepseek|deepcoder"),
    ("qwen", r"qwen|qwq"),
    ("mistral", r"mistral|mixtral|devstral|magistral|ministral|pixtral|voxtral|leanstral|codestral"),
    ("gemma", r"gemma"),
    ("phi", r"(^|/)phi|phi-?\d|phi_"),
    ("llama", r"llama|smollm|vicuna|alpaca|yi-|/yi|orpheus|hermes"),
    ("falcon", r"falcon"),
    ("glm", r"glm"),
    ("cohere", r"cohere|command-r|c4ai|aya"),
    ("gpt-oss", r"gpt-oss"),
    ("olmo", r"olmo"),
    ("granite", r"granite"),
]
MULTIMODAL = re.compile(r"vision|-vl|_vl|vl-|llava|pixtral|voxtral|gemma-3n|internvl|smolvlm|speech|audio")
NETWORK = re.compile(r"Hugging Face Hub|HF_HUB_OFFLINE|HF_DATASETS_OFFLINE|local cache|cannot be reached|"
                     r"offline mode|ConnectionError|Max retries|huggingface\.co|LocalEntryNotFound", re.I)
PROBLEM_KEY = re.compile(r"^([A-Za-z_][\w.\-]*(?:\[[^\]]*\][\w.\-]*)*):\s")
PROBLEMS_HEADER = re.compile(r"^error: \d+ problems? in .*:\s*$")
STATUSES = ("accepted", "rejected", "network_only", "crashed", "timeout")
# removed from a recipe before a tiny run: they reach the network or need several GPUs
RUN_DROPPED = re.compile(r"^(hub_.*|push_dataset_to_hub|hf_use_auth_token|wandb_.*|use_wandb|mlflow_.*|use_mlflow|"
                         r"comet_.*|use_comet|deepspeed|fsdp.*|base_model_config|tokenizer_config|model_type|"
                         r"tokenizer_type|revision_of_model|model_revision|dataset_prepared_path|test_datasets|"
                         r"num_epochs|eval_steps|evals_per_epoch|save_steps|saves_per_epoch|resume_from_checkpoint|"
                         r"auto_resume_from_checkpoints|lora_model_dir)$")
DATASET_DROPPED = ("name", "data_files", "ds_type", "revision", "split", "data_dir", "trust_remote_code")


class Fail(Exception):
    """A message for the user, printed without a traceback."""


# -- the corpus ------------------------------------------------------------------------------------------------

def sdist_url(index: str) -> str:
    """The sdist's download address, from PyPI's JSON API (the release's page, else the project's)."""
    errors = []
    for api in (f"{index}/pypi/axolotl/{VERSION}/json", f"{index}/pypi/axolotl/json"):
        try:
            with urllib.request.urlopen(api, timeout=60) as response:
                meta = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{api}: {e}")
            continue
        files = meta.get("urls", []) if api.endswith(f"/{VERSION}/json") else meta.get("releases", {}).get(VERSION, [])
        for f in files:
            if f.get("filename") == SDIST:
                return urllib.parse.urljoin(api, f["url"])  # a mirror may give the address relative to the API
        errors.append(f"{api}: no {SDIST} listed")
    raise Fail("cannot find " + SDIST + " on PyPI:\n  " + "\n  ".join(errors))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache: Path, index: str) -> Path:
    sdist = cache / SDIST
    if sdist.exists() and sha256_of(sdist) == SHA256:
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    try:
        url = sdist_url(index)
        print(f"downloading {url}", file=sys.stderr)
        part = sdist.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=120) as response, open(part, "wb") as fh:
            while block := response.read(1 << 20):
                fh.write(block)
    except Fail as e:
        raise Fail(f"{e}\nthe corpus is not in the cache ({sdist}) and PyPI cannot be reached; run this once "
                   f"online, or put {SDIST} (sha256 {SHA256}) in {cache}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Fail(f"downloading {SDIST} failed: {e}\nthe corpus is not in the cache ({sdist}); run this once "
                   f"online, or put {SDIST} (sha256 {SHA256}) in {cache}") from None
    got = sha256_of(part)
    if got != SHA256:
        part.unlink()
        raise Fail(f"{url}: sha256 {got}, expected {SHA256}; the file was deleted")
    part.replace(sdist)
    return sdist


def unpack_recipes(sdist: Path, cache: Path) -> list[tuple[str, Path]]:
    """(path in Axolotl's repository, unpacked file) of every example recipe, sorted by path."""
    target = cache / "recipes"
    stamp = target / ".sha256"
    recipes = []
    fresh = not (stamp.exists() and stamp.read_text() == SHA256)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)  # "axolotl-0.21.0/examples/..."
            if len(parts) < 2 or not member.isfile():
                continue
            rel = parts[1]
            if (not rel.startswith("examples/") or rel.startswith(SKIPPED_DIRS)
                    or not rel.endswith((".yml", ".yaml")) or ".." in rel.split("/")):
                continue
            dest = target / rel
            if fresh or not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
            recipes.append((rel, dest))
    stamp.write_text(SHA256)
    return sorted(recipes)


# -- classification and validation -----------------------------------------------------------------------------

def family_of(base_model: str) -> str:
    text = (base_model or "").lower()
    return next((family for family, pattern in FAMILIES if re.search(pattern, text)), "other")


def is_set(value) -> bool:
    return value not in (None, False, "", [], {}, "false", "False", "none", "None")


def describe(rel: str, path: Path) -> dict:
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        recipe = None
    if not isinstance(recipe, dict):
        return dict(path=rel, category="unparsable", family="other", multimodal=False, base_model="")
    if is_set(recipe.get("rl")) or is_set(recipe.get("reward_model")) or is_set(recipe.get("process_reward_model")):
        category = "preference"
    elif is_set(recipe.get("pretraining_dataset")):
        category = "pretrain"
    else:
        category = "sft"
    base = str(recipe.get("base_model") or "")
    multimodal = bool(is_set(recipe.get("processor_type")) or is_set(recipe.get("is_multimodal"))
                      or MULTIMODAL.search(f"{base.lower()} {rel.lower()}"))
    return dict(path=rel, category=category, family=family_of(base), multimodal=multimodal, base_model=base)


def parse_problems(output: str) -> list[tuple[str, str]]:
    """(key, message) of each problem in ``ftcore validate``'s output."""
    problems: list[tuple[str, str]] = []
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if PROBLEMS_HEADER.match(line):
            i += 1
            while i < len(lines) and lines[i].startswith("  "):
                text = lines[i].strip()
                if lines[i].startswith("    ") and problems:  # a wrapped line continues the problem above
                    problems[-1] = (problems[-1][0], f"{problems[-1][1]} {text}")
                else:
                    match = PROBLEM_KEY.match(text)
                    problems.append((match.group(1) if match else "(none)", text))
                i += 1
            continue
        if line.startswith("error:"):
            text = re.sub(r"^\S+\.ya?ml:\s*", "", line[len("error:"):].strip())
            match = PROBLEM_KEY.match(text)
            problems.append((match.group(1) if match else "(none)", text))
        i += 1
    return problems


def offline_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                NO_COLOR="1", TERM="dumb")


def validate(path: Path, workdir: str) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "ftcore", "validate", "--log-format", "plain", str(path)],
                              env=offline_env(), cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", rc=None, problems=[], net_notes=0, seconds=TIMEOUT, tail="")
    output = done.stdout + done.stderr
    problems = parse_problems(output)
    net_notes = sum(1 for line in output.splitlines() if line.lstrip().startswith("note:") and NETWORK.search(line))
    if "Traceback (most recent call last)" in output:
        status = "crashed"
    elif done.returncode == 0:
        status = "accepted"
    elif problems and all(NETWORK.search(message) for _, message in problems):
        status = "network_only"
    else:
        status = "rejected"
        if not problems:
            problems = [("(unparsed)", " | ".join(output.strip().splitlines()[-3:])[:300])]
    return dict(status=status, rc=done.returncode, problems=problems, net_notes=net_notes,
                seconds=round(time.perf_counter() - start, 2), tail="\n".join(output.strip().splitlines()[-6:]))


def index_key(key: str) -> str:
    return re.sub(r"\[\d+\]", "[N]", key)


# -- tiny runs -------------------------------------------------------------------------------------------------

WORDS = "the a red blue green sky sea cat dog bird runs jumps sings under over near quickly slowly".split()


def sentence(rng: random.Random, n: int = 10) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def rows_for(entry: dict, rng: random.Random, n: int = 48) -> list[dict]:
    """Rows shaped as the dataset entry's ``type`` reads them."""
    kind = entry.get("type")
    kind = kind if isinstance(kind, str) else "alpaca"
    if kind.split(".")[0] in ("chat_template", "sharegpt"):
        sharegpt = kind.startswith("sharegpt")
        field = entry.get("field_messages") or ("conversations" if sharegpt else "messages")
        mappings = entry.get("message_property_mappings") or {}
        default_role, default_content = ("from", "value") if sharegpt and not mappings else ("role", "content")
        role_key = mappings.get("role") or entry.get("message_field_role") or default_role
        content_key = mappings.get("content") or entry.get("message_field_content") or default_content
        names = {"user": "human" if sharegpt else "user", "assistant": "gpt" if sharegpt else "assistant"}
        for role, aliases in (entry.get("roles") or {}).items():  # the recipe's own role names
            if role in names and aliases:
                names[role] = aliases[0] if isinstance(aliases, list) else aliases
        return [{field: [{role_key: names["user"], content_key: sentence(rng)},
                         {role_key: names["assistant"], content_key: sentence(rng)}]} for _ in range(n)]
    if kind in ("completion", "pretrain"):
        return [{entry.get("field") or "text": sentence(rng, 40)} for _ in range(n)]
    return [{"instruction": sentence(rng), "input": "", "output": sentence(rng)} for _ in range(n)]


def tiny_recipe(recipe: dict, model: Path, folder: Path) -> dict:
    rng = random.Random(0)
    recipe = {k: v for k, v in recipe.items() if not RUN_DROPPED.match(k)}
    datasets = []
    for i, entry in enumerate(recipe.get("datasets") or []):
        entry = {k: v for k, v in (entry if isinstance(entry, dict) else {}).items() if k not in DATASET_DROPPED}
        data = folder / f"data{i}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows_for(entry, rng)), encoding="utf-8")
        datasets.append({**entry, "path": str(data)})
    recipe.update(base_model=str(model), datasets=datasets, max_steps=2, output_dir=str(folder / "out"),
                  sequence_len=min(int(recipe.get("sequence_len") or 512), 512))
    return recipe


def tiny_model(cache: Path, family: str) -> Path:
    model = cache / f"tiny-{family}"
    if not (model / "config.json").exists():
        done = subprocess.run([sys.executable, "-m", "ftcore.testing.tiny", family, str(model)],
                              capture_output=True, text=True)
        if done.returncode:
            raise Fail(f"building the tiny {family} model failed:\n{done.stderr[-2000:]}")
    return model


def run_tiny(rel: str, path: Path, family: str, cache: Path, timeout: int) -> dict:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    model = tiny_model(cache, RUN_FAMILIES[family])
    with tempfile.TemporaryDirectory(prefix="ftcore-axolotl-run-") as tmp:
        folder = Path(tmp)
        file = folder / Path(rel).name
        file.write_text(yaml.safe_dump(tiny_recipe(recipe, model, folder), sort_keys=False), encoding="utf-8")
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "ftcore", "run", "--log-format", "plain", str(file)],
                                  env=offline_env(), cwd=tmp, capture_output=True, text=True, timeout=timeout)
            rc, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            rc, output = "timeout", ""
    return dict(path=rel, tiny_model=RUN_FAMILIES[family], rc=rc, seconds=round(time.perf_counter() - start, 1),
                tail="\n".join(output.strip().splitlines()[-5:]))


# -- report ----------------------------------------------------------------------------------------------------

def row(label: str, items: list[dict]) -> str:
    counts = collections.Counter(r["status"] for r in items)
    n = len(items)
    cells = [f"{counts[s]} ({100 * counts[s] / n:.0f}%)" if n else "-" for s in STATUSES]
    return f"| {label:<40} | {n:>4} | " + " | ".join(f"{c:>12}" for c in cells) + " |"


def report(results: list[dict], top: int) -> None:
    print(f"corpus: {len(results)} recipes of {SDIST} (examples/ minus archived/ and cloud/)")
    print()
    print(f"| {'recipes':<40} | {'n':>4} | " + " | ".join(f"{s:>12}" for s in STATUSES) + " |")
    print(f"|{'-' * 42}|{'-' * 5}:|" + "|".join("-" * 13 + ":" for _ in STATUSES) + "|")
    print(row("all", results))
    for category in sorted({r["category"] for r in results}):
        print(row(f"  {category}", [r for r in results if r["category"] == category]))
    sft = [r for r in results if r["category"] == "sft"]
    main = [r for r in sft if r["family"] in MAIN_FAMILIES]
    print(row("sft, main families", main))
    print(row("  of which text-only", [r for r in main if not r["multimodal"]]))
    for family in sorted({r["family"] for r in results}):
        print(row(f"{family} (all categories)", [r for r in results if r["family"] == family]))
    print()
    print(f"main families: {', '.join(MAIN_FAMILIES)}")
    print("sft accepted by family: " + "; ".join(
        f"{f} {sum(r['status'] == 'accepted' for r in sft if r['family'] == f)}/"
        f"{sum(r['family'] == f for r in sft)}" for f in sorted({r['family'] for r in sft})))
    notes = sum(1 for r in results if r["status"] == "accepted" and r["net_notes"])
    print(f"{notes} accepted recipes carried a note that base_model or a dataset is not in the local cache")

    rejected = [r for r in results if r["status"] == "rejected"]
    named, alone = collections.Counter(), collections.Counter()
    for r in rejected:
        keys = {index_key(k) for k, message in r["problems"] if not NETWORK.search(message)}
        named.update(keys)
        if len(keys) == 1:
            alone.update(keys)
    print()
    print(f"rejected: {len(rejected)} recipes naming {len(named)} distinct keys; the top {top} "
          f"('alone': the recipes rejected for that key only)")
    print()
    print(f"| {'key':<32} | {'recipes':>7} | {'alone':>5} | example message |")
    print(f"|{'-' * 34}|{'-' * 8}:|{'-' * 6}:|{'-' * 17}|")
    for key, n in sorted(named.items(), key=lambda item: (-item[1], item[0]))[:top]:  # ties by name
        raw, example = next((k, m) for r in rejected for k, m in r["problems"] if index_key(k) == key)
        example = example[len(raw) + 2:] if example.startswith(raw + ": ") else example
        print(f"| {key:<32} | {n:>7} | {alone[key]:>5} | {example[:90]} |")
    for r in results:
        if r["status"] in ("crashed", "timeout"):
            print(f"\n{r['status'].upper()}: {r['path']}\n    " + r["tail"].replace("\n", "\n    "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ftcore" / f"axolotl-{VERSION}",
                        help="where the sdist, its recipes and the tiny models are kept")
    parser.add_argument("--index", default=PYPI, help="PyPI's address (default %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="validations at a time")
    parser.add_argument("--top", type=int, default=25, help="rejection keys to list")
    parser.add_argument("--json", type=Path, help="write the per-recipe results to this file")
    parser.add_argument("--run", type=int, default=0, metavar="N",
                        help="also train up to N accepted sft recipes (llama, qwen, mistral) on a tiny model")
    parser.add_argument("--run-timeout", type=int, default=900, help="seconds per tiny run")
    args = parser.parse_args()

    try:
        cache = args.cache.expanduser()
        recipes = unpack_recipes(fetch_sdist(cache, args.index.rstrip("/")), cache)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="ftcore-axolotl-") as workdir, cf.ThreadPoolExecutor(args.jobs) as ex:
            checked = list(ex.map(lambda item: validate(item[1], workdir), recipes))
        results = [{**describe(rel, path), **check} for (rel, path), check in zip(recipes, checked)]
        report(results, args.top)
        print(f"\nvalidated {len(results)} recipes in {time.perf_counter() - start:.0f} s, {args.jobs} at a time")

        runs = []
        if args.run:
            chosen = [r for r in results if r["status"] == "accepted" and r["category"] == "sft"
                      and r["family"] in RUN_FAMILIES and not r["multimodal"]][:args.run]
            print(f"\ntiny runs: {len(chosen)} accepted text sft recipes of {', '.join(RUN_FAMILIES)} "
                  f"(max_steps 2, sequence_len <= 512, tiny random models)\n")
            print(f"| {'recipe':<56} | {'model':<6} | {'rc':>7} | {'seconds':>7} |")
            print(f"|{'-' * 58}|{'-' * 8}|{'-' * 8}:|{'-' * 8}:|")
            paths = dict(recipes)
            for r in chosen:
                done = run_tiny(r["path"], paths[r["path"]], r["family"], cache, args.run_timeout)
                runs.append(done)
                print(f"| {done['path']:<56} | {done['tiny_model']:<6} | {done['rc']!s:>7} | {done['seconds']:>7.1f} |",
                      flush=True)
            for done in runs:
                if done["rc"] != 0:
                    print(f"\n{done['path']} (rc {done['rc']}):\n    " + done["tail"].replace("\n", "\n    "))
        if args.json:
            args.json.write_text(json.dumps(
                {"corpus": SDIST, "sha256": SHA256, "recipes": [
                    {**{k: v for k, v in r.items() if k != "tail"},
                     "problems": [{"key": k, "message": m} for k, m in r["problems"]]} for r in results],
                 "runs": runs}, indent=1))
            print(f"\nper-recipe results: {args.json}")
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
