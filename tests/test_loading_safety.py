"""Model, tokenizer and adapter loading refuses what it must not load silently: custom code, pickles, corrupt files."""

import json
import os
import pickle
import shutil
from types import SimpleNamespace

import pytest

from ftcore import hub
from ftcore.errors import FtcoreError
from ftcore.loading import check_source, check_weights, from_pretrained


def _recipe(base, **keys):
    values = dict(base_model=str(base), base_model_config=None, tokenizer_config=None, trust_remote_code=False,
                  allow_pickle=False, revision_of_model=None, attention="sdpa", adapter="lora", bf16=False,
                  fp16=False, tf32=False, model_type=None, tokenizer_type=None, special_tokens=None, tokens=None)
    values.update(keys)
    return SimpleNamespace(**values)


def _copy(tiny_llama, tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(tiny_llama, folder)
    return folder


@pytest.fixture
def pickled_model(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    import torch

    folder = _copy(tiny_llama, tmp_path, "pickled")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    try:
        model.save_pretrained(folder, safe_serialization=False)
    except TypeError:
        pass
    for p in folder.glob("*.safetensors"):
        p.unlink()
    if not (folder / "pytorch_model.bin").exists():  # transformers 5 writes safetensors only
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists()
    return folder


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_custom_code_without_trust_is_refused(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FtcoreError) as info:
        check_source("base_model", str(folder))
    assert "base_model" in str(info.value) and "ships its own Python code" in str(info.value)
    assert "trust_remote_code: true" in str(info.value)


def test_unknown_model_type_is_custom_code(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_llama_xyz"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FtcoreError, match="ships its own Python code"):
        check_source("base_model", str(folder), weights=False)  # the tokenizer load too


def test_trust_remote_code_names_the_repository(tiny_llama, tmp_path, caplog):
    folder = _copy(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        check_source("base_model", str(folder), trust_remote_code=True, revision="abc123")
    assert any(str(folder) in r.getMessage() and "abc123" in r.getMessage() for r in caplog.records)


def _recording(seen: dict):
    """A model class whose ``from_pretrained`` records the keyword arguments it got in ``seen``."""

    class Fake:
        @classmethod
        def from_pretrained(cls, source, **kwargs):
            seen.update(kwargs)
            return "model"

    return Fake


def test_from_pretrained_passes_false_by_default(tiny_llama, monkeypatch):
    seen = {}
    Fake = _recording(seen)

    assert from_pretrained(_recipe(tiny_llama), None, Fake) == "model"
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_pickle_base_model_is_refused(pickled_model):
    with pytest.raises(FtcoreError) as info:
        check_source("base_model", str(pickled_model))
    message = str(info.value)
    assert "pytorch_model.bin" in message and "can run code" in message
    assert "safetensors" in message and "allow_pickle: true" in message


def test_pickle_base_model_loads_with_allow_pickle(pickled_model):
    from transformers import AutoModelForCausalLM

    model = from_pretrained(_recipe(pickled_model, allow_pickle=True), None, AutoModelForCausalLM)
    assert model.config.model_type == "llama"


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "adapter_model.bin"])
def test_malicious_pickle_is_never_unpickled(tiny_llama, tmp_path, name):
    from transformers import AutoModelForCausalLM

    folder = _copy(tiny_llama, tmp_path)
    for p in folder.glob("*.safetensors"):
        p.unlink()
    canary = tmp_path / "canary"
    (folder / name).write_bytes(pickle.dumps(_Canary(str(canary))))
    with pytest.raises(FtcoreError, match=name):
        from_pretrained(_recipe(folder), None, AutoModelForCausalLM)
    with pytest.raises(FtcoreError, match=name):
        check_weights("lora_model_dir", folder, False, adapter=True)
    assert not canary.exists()


def test_missing_and_corrupt_config(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(FtcoreError, match=r"base_model: .*config.json.* not valid JSON"):
        check_source("base_model", str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(FtcoreError, match="base_model: .*no config.json"):
        check_source("base_model", str(folder))


def test_truncated_safetensors_and_no_weights(tiny_llama, tmp_path):
    folder = _copy(tiny_llama, tmp_path)
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(FtcoreError, match=r"base_model: .*safetensors.*truncated"):
        check_source("base_model", str(folder))
    weights.unlink()
    with pytest.raises(FtcoreError, match="base_model: .*no weights"):
        check_source("base_model", str(folder))


def test_missing_local_path():
    with pytest.raises(FtcoreError, match="base_model: './nowhere/model' does not exist"):
        check_source("base_model", "./nowhere/model")


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtcoreError, match="tokenizer_config: 'someone/not-cached-model'.*HF_HUB_OFFLINE"):
        check_source("tokenizer_config", "someone/not-cached-model", weights=False)


def test_hub_id_no_network_fails_at_once(monkeypatch):
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hub._reachable.cache_clear()
    monkeypatch.setattr(hub, "_reachable", lambda: False)
    with pytest.raises(FtcoreError, match="base_model: 'someone/not-cached-model'.*no network"):
        check_source("base_model", "someone/not-cached-model")


def test_flash_attention_on_a_machine_without_cuda_loads_with_sdpa_and_says_so(tiny_llama, monkeypatch, caplog):
    import torch

    seen = {}
    Fake = _recording(seen)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING"):
        from_pretrained(_recipe(tiny_llama, attention="flash_attention_2"), None, Fake)
    assert seen["attn_implementation"] == "sdpa"
    assert any("flash_attention_2 needs a CUDA GPU" in r.getMessage() and "sdpa" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from_pretrained(_recipe(tiny_llama, attention="flash_attention_2"), None, Fake)
    assert seen["attn_implementation"] == "flash_attention_2"  # on a GPU machine the recipe's kernel is asked for
