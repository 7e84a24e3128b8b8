"""Tiny models and tokenizers of real families, built offline and deterministically.

Part of the plugin-author kit (``ftcore.testing``; its pytest fixtures
``ftcore_tiny_llama`` and friends build these), and used by ftcore's own tests,
the quickstart and the benchmarks: nothing is downloaded. The
tokenizers are byte-level BPE trained on the spot with ``tokenizers`` and carry
each family's real special tokens, so chat templates and masks are exercised
for real. Layer sizes are multiples of 32 (bitsandbytes' 4-bit CPU kernels
need that).

    python -m ftcore.testing.tiny llama3 OUT_DIR [--hidden 64 --layers 2 --vocab 512]
    python -m ftcore.testing.tiny mllama OUT_DIR          # a tiny Llama 3.2 Vision and its processor
    python -m ftcore.testing.tiny quickstart recipes/quickstart     # rebuild the quickstart's files
"""

from __future__ import annotations

import argparse
from pathlib import Path

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                 "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>"]

def _texts():
    """The chat templates and Alpaca preambles the tiny models carry (``ftcore.api``): the one place that
    imports them.

    Imported when first needed (not at module level), so importing this module stays cheap.
    """
    from types import SimpleNamespace

    from ftcore.api import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, CHAT_TEMPLATES

    return SimpleNamespace(LLAMA3=CHAT_TEMPLATES["llama3"], CHATML=CHAT_TEMPLATES["chatml"],
                           LLAMA3_2_VISION=CHAT_TEMPLATES["llama3_2_vision"], PREAMBLE=ALPACA_PREAMBLE,
                           PREAMBLE_WITH_INPUT=ALPACA_PREAMBLE_WITH_INPUT)


DEFAULT_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "system user assistant You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 11 12",
    "red green blue yellow black white orange purple pink brown gray",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "What is the capital of France? Paris. Reverse the words. Sort the numbers. Count the letters.",
]


def train_tokenizer(family: str, corpus=None, vocab_size: int = 512):
    """A ``PreTrainedTokenizerFast`` of ``family`` ("llama3" or "qwen2") trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = {"llama3": LLAMA3_SPECIAL, "qwen2": QWEN2_SPECIAL}[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS) * 3, trainer=trainer)
    if family == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|eot_id|>", chat_template=_texts().LLAMA3)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       chat_template=_texts().CHATML)
    fast.model_max_length = 4096
    return fast


def build_model(family: str, tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate: int | None = None, seed: int = 0):
    """A randomly initialised causal LM of ``family`` sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    vocab = -(-len(tokenizer) // 32) * 32
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if family == "llama3":
        config = LlamaConfig(**common, rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        return LlamaForCausalLM(config)
    config = Qwen2Config(**common, rope_theta=1000000.0, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    return Qwen2ForCausalLM(config)


def build(family: str, out_dir, corpus=None, vocab_size: int = 512, dtype: str = "float32", **model_kwargs) -> Path:
    """Train a tokenizer, build a model, save both to ``out_dir`` (loadable with plain transformers)."""
    import torch

    out = Path(out_dir)
    tokenizer = train_tokenizer(family, corpus, vocab_size)
    model = build_model(family, tokenizer, **model_kwargs)
    model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ── the quickstart: a tiny Llama and a small task set, committed under recipes/quickstart ──

WORDS = ["red", "green", "blue", "yellow", "black", "white", "cat", "dog", "bird", "fish", "tree", "star",
         "moon", "sun", "rain", "snow"]


def quickstart_rows(n: int = 1200, seed: int = 0) -> list[dict]:
    """Alpaca rows of four small word and number tasks a tiny model can learn in a minute."""
    import random

    r = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            words = r.sample(WORDS, r.randint(3, 5))
            rows.append({"instruction": "Reverse the words.", "input": " ".join(words),
                         "output": " ".join(reversed(words))})
        elif kind == 1:
            nums = [r.randint(0, 9) for _ in range(r.randint(3, 6))]
            rows.append({"instruction": "Sort the numbers.", "input": " ".join(map(str, nums)),
                         "output": " ".join(map(str, sorted(nums)))})
        elif kind == 2:
            word = r.choice(WORDS)
            rows.append({"instruction": "Repeat the word three times.", "input": word,
                         "output": " ".join([word] * 3)})
        else:
            words = r.sample(WORDS, r.randint(3, 5))
            rows.append({"instruction": "Name the last word.", "input": " ".join(words), "output": words[-1]})
    return rows


def pretraining_texts(n: int = 3000, seed: int = 1) -> list[str]:
    """Plain word and number sequences: what the quickstart's base model "knows" before fine-tuning."""
    import random

    r = random.Random(seed)
    texts = []
    for i in range(n):
        if i % 3 == 0:
            texts.append(" ".join(r.choice(WORDS) for _ in range(r.randint(3, 10))))
        elif i % 3 == 1:
            texts.append(" ".join(str(r.randint(0, 9)) for _ in range(r.randint(3, 10))))
        else:
            texts.append(" ".join(sorted(str(r.randint(0, 9)) for _ in range(r.randint(3, 10)))))
    return texts


def build_quickstart(out_dir) -> Path:
    """Write ``tasks.jsonl`` and ``tiny-llama/`` (about 1 M parameters, bf16) into ``out_dir``.

    The model is first pretrained for a minute with ftcore itself (full
    fine-tuning, ``type: completion``) on plain word and number sequences, so
    the quickstart fine-tunes a base that knows its vocabulary but not the
    tasks: the evaluation loss before and after then means something.
    """
    import json
    import tempfile

    from ftcore.cli import main as ftcore_main

    PREAMBLE, PREAMBLE_WITH_INPUT = _texts().PREAMBLE, _texts().PREAMBLE_WITH_INPUT

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = quickstart_rows()
    (out / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = DEFAULT_CORPUS + [f"{PREAMBLE_WITH_INPUT}### Instruction:\n{r['instruction']}\n\n### Input:\n"
                               f"{r['input']}\n\n### Response:\n{r['output']}" for r in rows[:400]] + [PREAMBLE] * 50
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build("llama3", tmp / "random", corpus, vocab_size=1024, hidden=128, layers=4, intermediate=256, seed=0)
        (tmp / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pretraining_texts()),
                                         encoding="utf-8")
        recipe = {"base_model": str(tmp / "random"), "datasets": [{"path": str(tmp / "texts.jsonl"),
                  "type": "completion"}], "sequence_len": 64, "micro_batch_size": 16, "num_epochs": 2,
                  "learning_rate": 3e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.05,
                  "logging_steps": 50, "seed": 0, "output_dir": str(tmp / "pretrained")}
        import yaml

        (tmp / "pretrain.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        if ftcore_main(["run", str(tmp / "pretrain.yaml")]) != 0:
            raise RuntimeError("pretraining the quickstart model failed")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import torch

        model = AutoModelForCausalLM.from_pretrained(tmp / "pretrained", dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(tmp / "random")  # without the pad token the run added
        target = out / "tiny-llama"
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return out


# ── Llama 3.2 Vision: a tiny MllamaForConditionalGeneration and its processor ──


def build_mllama(out_dir, corpus=None, vocab_size: int = 512, hidden: int = 64, layers: int = 2,
                 image_size: int = 28, max_tiles: int = 4, seed: int = 0, dtype: str = "float32") -> Path:
    """A tiny Llama 3.2 Vision (``MllamaForConditionalGeneration``) and its ``MllamaProcessor`` in ``out_dir``.

    The tokenizer is Llama 3's with ``<|image|>``; the processor uses the PIL image
    processor (no torchvision), ``image_size`` pixel tiles, up to ``max_tiles`` per
    image. The last text layer is a cross-attention layer. Every language-model
    linear layer's output size is a multiple of 32, so it quantizes on CPU.
    """
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    LLAMA3_2_VISION = _texts().LLAMA3_2_VISION
    out = Path(out_dir)
    tokenizer = train_tokenizer("llama3", corpus, vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    tokenizer.chat_template = LLAMA3_2_VISION
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    vision_hidden = 32
    vision = dict(hidden_size=vision_hidden, attention_heads=2, num_hidden_layers=2, num_global_layers=1,
                  intermediate_size=64, intermediate_layers_indices=[0], vision_output_dim=vision_hidden * 2,
                  image_size=image_size, patch_size=14, max_num_tiles=max_tiles)
    text = dict(vocab_size=-(-len(tokenizer) // 32) * 32, hidden_size=hidden, num_hidden_layers=layers + 1,
                num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                cross_attention_layers=[layers], max_position_embeddings=4096, rope_theta=500000.0,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>"), tie_word_embeddings=False)
    torch.manual_seed(seed)
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # the tanh gates start at 0 (images unseen); a trained model's are open
        for name, parameter in model.named_parameters():
            if not name.endswith((".weight", ".bias")) and "gate" in name.rsplit(".", 1)[-1]:
                parameter.fill_(1.0)
    model.to(getattr(torch, dtype))
    images = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=max_tiles)
    processor = MllamaProcessor(images, tokenizer, chat_template=LLAMA3_2_VISION)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ftcore.testing.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=["llama3", "qwen2", "mllama", "quickstart"])
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--corpus", help="a text file to train the tokenizer on (one document per line)")
    args = parser.parse_args(argv)
    if args.family == "quickstart":
        print(build_quickstart(args.out_dir))
        return
    corpus = Path(args.corpus).read_text(encoding="utf-8").splitlines() if args.corpus else None
    if args.family == "mllama":
        print(build_mllama(args.out_dir, corpus, args.vocab, hidden=args.hidden, layers=args.layers))
        return
    print(build(args.family, args.out_dir, corpus, args.vocab, hidden=args.hidden, layers=args.layers))


if __name__ == "__main__":
    main()
