"""``ftcore estimate RECIPE [key=value ...] [--gpu-memory 24GiB] [--gpus N] [--json]``: memory per GPU, before
anything is downloaded.

    ftcore estimate recipes/llama31-qlora.yaml --gpu-memory 24GiB
    ftcore estimate llama31-lora micro_batch_size=1 --gpu-memory 24GiB --json

The recipe is read as ``ftcore run`` reads it (``ftcore.api.load_recipe``, overrides included); the model's
architecture comes from ftcore's table of models (``register_models``), a local folder's config.json, the
Hugging Face cache, or the Hub when online (``memory.architecture``). The arithmetic is ``memory.estimate``.
Without ``--gpu-memory`` the local GPU's size is used when ``nvidia-smi`` reports one; else the breakdown is
printed without a verdict. Neither torch nor transformers is imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from ftcore.api import FtcoreError, load_recipe, model_facts, recipe_arguments, registered_models

from .memory import GiB, Settings, architecture, estimate, parse_size, parameter_counts

HELP = "estimate a recipe's GPU memory (weights, adapter, gradients, optimizer, activations) and whether it fits"

ITEMS = {
    "weights": "the base model's weights",
    "adapter": "LoRA weights (fp32)",
    "gradients": "a gradient per trainable parameter",
    "optimizer_states": "optimizer states",
    "activations": "saved activations (micro batch x sequence x layers x hidden)",
    "logits": "logits and loss buffers over the vocabulary",
    "optimizer_step": "temporaries inside torch AdamW's step",
    "overhead": "CUDA context, workspaces, temporaries",
}
PEAKS = {"loss": "the loss's backward", "layers": "the layers' backward", "optimizer step": "the optimizer step"}
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}


def configure(parser):
    recipe_arguments(parser)  # RECIPE [key=value ...], as `ftcore run` takes them (also after a flag)
    parser.add_argument("--gpu-memory", metavar="SIZE",
                        help="memory of one GPU, e.g. 24GiB, 80GB, 16G (GiB); default: the local GPU's (nvidia-smi), "
                             "else no verdict")
    parser.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="GPUs the run uses (ZeRO and FSDP divide what they shard by N; default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def local_gpu_memory() -> int | None:
    """The first local GPU's memory in bytes, from nvidia-smi when it answers quickly; else None."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=3)
        return int(float(out.stdout.split()[0]) * 1024 ** 2) if out.returncode == 0 and out.stdout.split() else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def smaller_models(plugins, model_id: str, facts) -> dict:
    """``{model_id: config}`` of the same family and task, smaller, of the same kind (Instruct or base)."""
    if facts is None:
        return {}
    instruct = model_id.lower().endswith("-instruct")
    return {other.model_id: other.config for other in registered_models(plugins).values()
            if other.family == facts.family and other.task == facts.task and other.parameters < facts.parameters
            and other.model_id.lower().endswith("-instruct") == instruct}


def run_estimate(recipe, plugins, *, gpu_memory_bytes=None, gpus=1) -> dict:
    """The JSON object of ``ftcore estimate`` for a validated recipe."""
    config, source = architecture(recipe.base_model, plugins)
    facts = model_facts(plugins, recipe.base_model)
    settings = Settings.from_recipe(recipe)
    result = estimate(config, settings, gpu_memory_bytes=gpu_memory_bytes, gpus=gpus,
                      smaller_models=smaller_models(plugins, recipe.base_model, facts))
    out = {"model": recipe.base_model, "architecture_from": source,
           "license": facts.license if facts else None, "license_url": facts.license_url if facts else None,
           "gated": facts.gated if facts else None, "model_notes": facts.notes if facts else "",
           "method": settings.method}
    out.update(result.to_json())
    out["weights_gb"] = round(result.weights_bytes / 1e9, 3)
    out["total_gib"] = round(result.total_bytes / GiB, 3)
    return out


def handle(args) -> int:
    if args.gpus < 1:
        raise FtcoreError(f"--gpus: {args.gpus}; give 1 or more")
    gpu_memory = parse_size(args.gpu_memory) if args.gpu_memory else local_gpu_memory()
    recipe, _raw = load_recipe(args.recipe, args.overrides, args.plugins)
    out = run_estimate(recipe, args.plugins, gpu_memory_bytes=gpu_memory, gpus=args.gpus)
    if args.json:
        print(json.dumps(out))
    else:
        show(out)
    return 0


def _gib(n) -> str:
    return f"{n / GiB:,.2f} GiB"


def show(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    s = out["settings"]
    method = METHOD_NAMES[out["method"]]
    if out["method"] != "full":
        method += f" r={s['lora_r']}"
    print(f"model: {out['model']} ({out['architecture_from']}): {out['parameters'] / 1e9:.2f} B parameters, "
          f"{method} trains {out['trainable_parameters']:,}")
    if out["license"]:
        gated = ("gated on the Hub: accept the license on the model's page first" if out["gated"]
                 else "not gated")
        print(f"license: {out['license']} ({out['license_url']}); {gated}")
        if out["model_notes"] and not out["model_notes"].startswith("gated on the Hub"):
            print(f"note: {out['model_notes']}")
        elif out["model_notes"] and "; " in out["model_notes"]:
            print(f"note: {out['model_notes'].split('; ', 1)[1]}")
    else:
        print("license: not in ftcore's table; check the model's page")
    engine = (f"DeepSpeed ZeRO-{s['zero_stage']}" if s["zero_stage"] else "FSDP" if s["fsdp"] else None)
    print(f"per GPU: micro batch {s['micro_batch_size']} x sequence {s['sequence_len']}, {s['precision']}, "
          f"optimizer {s['optimizer']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
          f"chunked loss {'on' if s['chunked_loss'] else 'off'}"
          + (f", {engine} over {out['gpus']} GPUs" if engine else f", {out['gpus']} GPU(s)"))
    table = Table(show_header=True, header_style="bold")
    table.add_column("item")
    table.add_column("memory", justify="right")
    table.add_column("what")
    for key, value in out["breakdown"].items():
        table.add_row(key, _gib(value), ITEMS.get(key, ""))
    table.add_row("total", _gib(out["total_bytes"]), f"at the peak: {PEAKS.get(out.get('peak'), out.get('peak'))}",
                  style="bold")
    console.print(table)
    for note in out["notes"]:
        print(f"note: {note}")
    if out["gpu_memory_bytes"] is None:
        print("verdict: none (no GPU here; give --gpu-memory 24GiB to judge the fit)")
        return
    if out["fits"]:
        print(f"verdict: fits in {_gib(out['gpu_memory_bytes'])} with {_gib(out['headroom_bytes'])} headroom")
    else:
        print(f"verdict: does not fit in {_gib(out['gpu_memory_bytes'])}: {_gib(-out['headroom_bytes'])} over")
        if out["suggestions"]:
            print("each of these would fit:")
            for text in out["suggestions"]:
                print(f"  - {text}")
        else:
            print("no single change tried (QLoRA, a smaller micro batch, gradient checkpointing, chunked loss, "
                  "ZeRO-3 over up to 8 GPUs, a smaller model of the family) makes it fit")


__all__ = ["HELP", "configure", "handle", "run_estimate", "parameter_counts"]
