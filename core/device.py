"""Which precision and device a run gets, decided in one place.

``bf16: auto`` means bf16 where the GPU supports it, else fp32 (on CPU, bf16
works but is slow and fp16 is not supported for training), with a notice.
"""

from __future__ import annotations

from ftcore.errors import FtcoreError


def precision(recipe) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for this recipe on this machine."""
    import torch

    cuda = torch.cuda.is_available()
    if recipe.fp16:
        if not cuda:
            raise FtcoreError("fp16: true needs a CUDA GPU (mixed-precision fp16 training does not run on CPU); "
                              "use bf16: auto, or bf16: true on CPU")
        return "fp16"
    if recipe.bf16 is True:
        if cuda and not torch.cuda.is_bf16_supported():
            raise FtcoreError("bf16: true, but this GPU does not support bfloat16; use fp16: true or bf16: auto")
        return "bf16"
    if recipe.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def describe() -> dict:
    """The hardware, for ``run.json`` and the start-up banner."""
    import os
    import platform

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return info
