"""``ftcore merge RUN_DIR [--out DIR]``: fold a run's LoRA adapter into its base model.

    ftcore merge outputs/my-run                       # -> outputs/my-run/merged
    ftcore merge outputs/my-run --out my-model
    ftcore merge --base meta-llama/Llama-3.1-8B-Instruct --adapter some/adapter --out my-model

The base is always the original model in 16-bit (bf16 where the GPU supports
it, else fp16) or fp32 on CPU, never a quantized one: a QLoRA run trained on a
4-bit copy of ``base_model``, and its adapter is folded into the unquantized
weights. The result is a plain transformers model (``config.json`` +
``*.safetensors``) with the run's tokenizer and chat template. It is written
to a temporary folder next to ``--out`` and renamed at the end, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path

from ftcore.errors import FtcoreError

NAME = "merge"
HELP = "merge a run's LoRA adapter into its base model and save a plain transformers model"
TAKES_RECIPE = False

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = ("auto", "bf16", "fp16", "fp32")


def configure(parser):
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a run folder written by `ftcore run` (adapter files and recipe.yaml)")
    parser.add_argument("--out", metavar="DIR", help="where to write the merged model (default: RUN_DIR/merged)")
    parser.add_argument("--base", metavar="MODEL",
                        help="base model (folder or Hub id); with --adapter, instead of RUN_DIR "
                             "(default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", metavar="DIR", help="a peft LoRA adapter folder, instead of RUN_DIR")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="precision to merge and save in (auto: bf16 on a GPU that supports it, "
                             "else fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


# ---------------------------------------------------------------- what to merge (no torch needed)

def _read_recipe(run_dir: Path) -> dict:
    import yaml

    file = run_dir / "recipe.yaml"
    if not file.is_file():
        raise FtcoreError(f"{run_dir} has no recipe.yaml, so it is not an ftcore run folder; for an adapter "
                          f"from elsewhere use: ftcore merge --base MODEL --adapter {run_dir} --out DIR")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FtcoreError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data.get("base_model"):
        raise FtcoreError(f"{file} names no base_model; cannot tell which model to merge into")
    return data


def _check_adapter(adapter_dir: Path, run_folder: bool) -> dict:
    import json

    if not adapter_dir.is_dir():
        raise FtcoreError(f"no such folder: {adapter_dir}")
    file = adapter_dir / ADAPTER_CONFIG
    if not file.is_file():
        if (adapter_dir / "config.json").is_file() and any(adapter_dir.glob("*.safetensors")):
            what = "a full fine-tuning run" if run_folder else "a complete model, not an adapter"
            raise FtcoreError(f"nothing to merge: {adapter_dir} holds {what} (config.json and model weights, "
                              f"no {ADAPTER_CONFIG}); it already loads with "
                              f"AutoModelForCausalLM.from_pretrained('{adapter_dir}')")
        raise FtcoreError(f"nothing to merge: {adapter_dir} has no {ADAPTER_CONFIG} (no adapter was saved there)")
    config = json.loads(file.read_text(encoding="utf-8"))
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", ""):
        raise FtcoreError(f"{file}: peft_type {peft_type} cannot be merged into the weights; "
                          f"only LoRA adapters can (load it with PeftModel.from_pretrained instead)")
    if not any(adapter_dir.glob("adapter_model.*")):
        raise FtcoreError(f"nothing to merge: {adapter_dir} has {ADAPTER_CONFIG} but no adapter_model.safetensors")
    return config


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out(out: Path, sources: list[Path], overwrite: bool, run_folder: bool) -> None:
    for i, source in enumerate(sources):
        if _inside(source, out) and i > 0:
            raise FtcoreError(f"--out {out} is or contains the base model's folder {source}; "
                              f"choose another folder")
        if _inside(source, out):
            what = "run folder" if run_folder else "adapter folder"
            raise FtcoreError(
                f"--out {out} is the {what} {source}{' or contains it' if out != source else ''}: ftcore never "
                f"merges in place. The merged weights would replace the adapter the run saved, and a QLoRA "
                f"run's base is 4-bit, so merging into that quantized base would lose precision; the merge "
                f"loads the original 16-bit base instead. Choose another folder, e.g. --out {source / 'merged'}")
    if out.exists() and not out.is_dir():
        raise FtcoreError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FtcoreError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another folder")


# ---------------------------------------------------------------- the merge

def _dtype(choice: str):
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        choice = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    return choice, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice], cuda


def _load_base(base: str, model_class: str | None, dtype, device: str, trust_remote_code: bool, revision):
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    cls = AutoModelForCausalLM
    if model_class and model_class != cls.__name__:
        cls = getattr(transformers, model_class, None)
        if cls is None:
            raise FtcoreError(f"model_type: '{model_class}' is not a transformers class")
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise FtcoreError(f"cannot load the base model '{base}': {exc}") from exc
    if getattr(config, "quantization_config", None):
        qc = config.quantization_config
        method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", "quantized")
        raise FtcoreError(f"the base model '{base}' is a quantized checkpoint ({method}); merging into a "
                          f"quantized base would round the merged weights to its precision. Give the original "
                          f"16-bit model with --base")
    try:
        return cls.from_pretrained(base, dtype=dtype, device_map={"": device}, low_cpu_mem_usage=True,
                                   trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise FtcoreError(f"cannot load the base model '{base}': {exc}") from exc


def _load_tokenizer(sources, trust_remote_code: bool):
    from transformers import AutoTokenizer

    for source in sources:
        if Path(source).is_dir() and not (Path(source) / "tokenizer_config.json").is_file():
            continue
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code), source
        except (OSError, ValueError):
            continue
    return None, None


def handle(args) -> int:
    import os
    import shutil
    import time

    run_folder = args.run_dir is not None
    if run_folder and (args.base or args.adapter):
        raise FtcoreError("give either RUN_DIR, or --base/--adapter for an adapter from elsewhere, not both")
    if not run_folder and not args.adapter:
        raise FtcoreError("nothing to merge: give a run folder (ftcore merge RUN_DIR) "
                          "or an adapter (ftcore merge --base MODEL --adapter DIR --out DIR)")

    if run_folder:
        adapter_dir = Path(args.run_dir)
        if not adapter_dir.is_dir():
            raise FtcoreError(f"no such run folder: {adapter_dir}")
        recipe = _read_recipe(adapter_dir)
        _check_adapter(adapter_dir, run_folder=True)
        base = str(recipe["base_model"])
        model_class = recipe.get("model_type")
        trust = bool(recipe.get("trust_remote_code"))
        revision = recipe.get("revision_of_model")
        out = Path(args.out) if args.out else adapter_dir / "merged"
        sources = [adapter_dir.resolve()]
        tokenizer_sources = [str(adapter_dir), recipe.get("tokenizer_config") or base]
        quantized = [bits for key, bits in (("load_in_4bit", "4-bit"), ("load_in_8bit", "8-bit")) if recipe.get(key)]
    else:
        if not args.out:
            raise FtcoreError("--out DIR is required with --adapter")
        adapter_dir = Path(args.adapter)
        config = _check_adapter(adapter_dir, run_folder=False)
        base = args.base or config.get("base_model_name_or_path")
        if not base:
            raise FtcoreError(f"{adapter_dir / ADAPTER_CONFIG} names no base_model_name_or_path; give --base MODEL")
        model_class, trust, revision = None, False, None
        out = Path(args.out)
        sources = [adapter_dir.resolve()]
        tokenizer_sources = [str(adapter_dir), base]
        quantized = []
    if Path(base).expanduser().exists():
        sources.append(Path(base).expanduser().resolve())
    _check_out(out.resolve(), sources, args.overwrite, run_folder)

    start = time.time()
    import torch  # noqa: F401  (torch, transformers and peft load from here on)
    from peft import PeftModel

    name, dtype, cuda = _dtype(args.dtype)
    device = "cuda" if cuda else "cpu"
    note = f" (the run trained on a {'/'.join(quantized)} copy of it; merging into the original weights)" \
        if quantized else ""
    print(f"merge: base {base} in {name} on {device}{note}", flush=True)
    model = _load_base(base, model_class, dtype, device, trust, revision)

    tokenizer, tokenizer_source = _load_tokenizer(tokenizer_sources, trust)
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer is not None and len(tokenizer) > rows:  # the run added tokens and resized the embeddings
        print(f"merge: resizing the embeddings {rows} -> {len(tokenizer)} for the tokens the run added", flush=True)
        model.resize_token_embeddings(len(tokenizer))

    print(f"merge: adapter {adapter_dir}", flush=True)
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir), torch_device=device)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise FtcoreError(f"the adapter in {adapter_dir} does not fit the base model '{base}': {exc}") from exc
    model = model.merge_and_unload()

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        print(f"merge: saving to {out}", flush=True)
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    tok = f"tokenizer from {tokenizer_source}" if tokenizer is not None else "no tokenizer found (add one yourself)"
    print(f"merged: {out} ({size / 2**20:,.1f} MiB of weights, {name}; {tok}) in {time.time() - start:.1f}s")
    return 0
