"""The seed's models: architecture facts, license and gating, offline (``register_models``).

Llama 3.1 8B, 70B, 405B; Llama 3.2 1B, 3B, 11B Vision, 90B Vision; Qwen2.5 Coder 0.5B, 1.5B, 3B, 7B,
14B, 32B, each as its base and its Instruct Hub id. ``config`` holds the keys of the model's Hugging Face
``config.json`` that shape the network (sizes, vocabulary, tying, rope, nested text/vision configs for
Mllama) with their published values; base and Instruct differ only in the end-of-sequence tokens, which
the architecture does not depend on. ``parameters`` is the count of the published safetensors weights;
``tests/test_estimate.py`` builds each config with transformers on the meta device and checks that the
count it gives equals ``ftcore.plugins.planning.memory.parameter_counts(config).total`` and is within 2%
of it.

``ftcore estimate`` reads these for the memory arithmetic, ``ftcore init`` picks a model from them,
``ftcore recipes show`` and ``estimate`` print the license line. No torch here.
"""

from ftcore.api import hookimpl

FTCORE_CONTRACT = "1"

LLAMA31_LICENSE = ("Llama 3.1 Community License", "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/LICENSE")
LLAMA32_LICENSE = ("Llama 3.2 Community License", "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/LICENSE.txt")
APACHE = ("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")
QWEN_RESEARCH = ("Qwen Research License (non-commercial)",
                 "https://huggingface.co/Qwen/Qwen2.5-Coder-3B/blob/main/LICENSE")

GATED_NOTE = "gated on the Hub: accept the license on the model's page and log in (huggingface-cli login) first"
EU_VISION_NOTE = ("the Llama 3.2 license grants no rights to its multimodal models to individuals domiciled in, "
                  "or companies with a principal place of business in, the European Union (end users of "
                  "products built on them are not restricted)")


def _llama(hidden, intermediate, layers, heads, kv_heads, *, head_dim=128, tie=False, rope_factor=8.0):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": 128256, "tie_word_embeddings": tie, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": rope_factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "initializer_range": 0.02, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    }


def _mllama(hidden, intermediate, layers, heads, cross_attention_layers):
    text = _llama(hidden, intermediate, layers, heads, 8)
    for key in ("architectures", "tie_word_embeddings", "pretraining_tp", "attention_bias", "mlp_bias",
                "attention_dropout"):
        text.pop(key)
    text.update(model_type="mllama_text_model", cross_attention_layers=cross_attention_layers,
                dropout=0, eos_token_id=128001, pad_token_id=128004)
    return {
        "architectures": ["MllamaForConditionalGeneration"], "model_type": "mllama",
        "image_token_index": 128256, "torch_dtype": "bfloat16",
        "text_config": text,
        "vision_config": {
            "model_type": "mllama_vision_model", "hidden_size": 1280, "intermediate_size": 5120,
            "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16, "num_channels": 3,
            "image_size": 560, "patch_size": 14, "max_num_tiles": 4, "vision_output_dim": 7680,
            "intermediate_layers_indices": [3, 7, 15, 23, 30], "norm_eps": 1e-05, "hidden_act": "gelu",
            "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
        },
    }


def _qwen2(hidden, intermediate, layers, heads, kv_heads, *, vocab, tie):
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
        "vocab_size": vocab, "tie_word_embeddings": tie, "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": None,
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": layers,
        "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 151643, "eos_token_id": 151643,
        "torch_dtype": "bfloat16",
    }


# (base id, size, task, parameters, license, gated, config, notes); the Instruct id is base + "-Instruct"
LLAMA31 = [
    ("meta-llama/Llama-3.1-8B", "8B", 8_030_261_248, _llama(4096, 14336, 32, 32, 8)),
    ("meta-llama/Llama-3.1-70B", "70B", 70_553_706_496, _llama(8192, 28672, 80, 64, 8)),
    ("meta-llama/Llama-3.1-405B", "405B", 405_853_388_800, _llama(16384, 53248, 126, 128, 8)),
]
LLAMA32 = [
    ("meta-llama/Llama-3.2-1B", "1B", 1_235_814_400, _llama(2048, 8192, 16, 32, 8, head_dim=64, tie=True,
                                                            rope_factor=32.0)),
    ("meta-llama/Llama-3.2-3B", "3B", 3_212_749_824, _llama(3072, 8192, 28, 24, 8, tie=True, rope_factor=32.0)),
]
LLAMA32_VISION = [
    ("meta-llama/Llama-3.2-11B-Vision", "11B Vision", 10_670_220_835,
     _mllama(4096, 14336, 40, 32, [3, 8, 13, 18, 23, 28, 33, 38])),
    ("meta-llama/Llama-3.2-90B-Vision", "90B Vision", 88_600_000_000,  # the model card's 88.6B
     _mllama(8192, 28672, 100, 64, list(range(3, 100, 5)))),
]
QWEN25_CODER = [
    ("Qwen/Qwen2.5-Coder-0.5B", "0.5B", 494_032_768, _qwen2(896, 4864, 24, 14, 2, vocab=151936, tie=True)),
    ("Qwen/Qwen2.5-Coder-1.5B", "1.5B", 1_543_714_304, _qwen2(1536, 8960, 28, 12, 2, vocab=151936, tie=True)),
    ("Qwen/Qwen2.5-Coder-3B", "3B", 3_085_938_688, _qwen2(2048, 11008, 36, 16, 2, vocab=151936, tie=True)),
    ("Qwen/Qwen2.5-Coder-7B", "7B", 7_615_616_512, _qwen2(3584, 18944, 28, 28, 4, vocab=152064, tie=False)),
    ("Qwen/Qwen2.5-Coder-14B", "14B", 14_770_033_664, _qwen2(5120, 13824, 48, 40, 8, vocab=152064, tie=False)),
    ("Qwen/Qwen2.5-Coder-32B", "32B", 32_763_876_352, _qwen2(5120, 27648, 64, 40, 8, vocab=152064, tie=False)),
]


def _instruct(config: dict, family: str) -> dict:
    """The Instruct model's config: the same network, its end-of-turn tokens as end-of-sequence."""
    config = {**config}
    if family == "Qwen2.5 Coder":
        config["eos_token_id"] = 151645
    elif "text_config" in config:
        config["text_config"] = {**config["text_config"], "eos_token_id": [128001, 128008, 128009]}
    else:
        config["eos_token_id"] = [128001, 128008, 128009]
    return config


def entries():
    """Every registered model: ``(model_id, facts)`` with the keyword arguments of ``register``."""
    groups = [("Llama 3.1", "chat", LLAMA31_LICENSE, True, LLAMA31, GATED_NOTE),
              ("Llama 3.2", "chat", LLAMA32_LICENSE, True, LLAMA32, GATED_NOTE),
              ("Llama 3.2 Vision", "vision", LLAMA32_LICENSE, True, LLAMA32_VISION, f"{GATED_NOTE}; {EU_VISION_NOTE}"),
              ("Qwen2.5 Coder", "code", APACHE, False, QWEN25_CODER, "")]
    for family, task, (license, url), gated, models, notes in groups:
        for base_id, size, parameters, config in models:
            if family == "Qwen2.5 Coder" and size == "3B":
                license, url = QWEN_RESEARCH
                notes = "the Qwen Research License allows research and non-commercial use only"
            elif family == "Qwen2.5 Coder":
                license, url = APACHE
                notes = ""
            for model_id, cfg in ((base_id, config), (base_id + "-Instruct", _instruct(config, family))):
                yield model_id, dict(family=family, task=task, size=size, parameters=parameters, license=license,
                                     license_url=url, gated=gated, config=cfg, notes=notes)


@hookimpl(trylast=True)
def register_models(register):
    for model_id, facts in entries():
        register(model_id, **facts)
