"""Tiny models and tokenizers of real families, built offline and deterministically.

Used by the tests, the quickstart and benchmarks: nothing is downloaded. The
tokenizers are byte-level BPE trained on the spot with ``tokenizers`` and carry
each family's real special tokens, so chat templates and masks are exercised
for real. Layer sizes are multiples of 32 (bitsandbytes' 4-bit CPU kernels
need that).

    python -m ftcore.tiny llama3 OUT_DIR [--hidden 64 --layers 2 --vocab 512]
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
        from ftcore.plugins.formats.templates import LLAMA3

        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|eot_id|>", chat_template=LLAMA3)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        from ftcore.plugins.formats.templates import CHATML

        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       chat_template=CHATML)
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ftcore.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=["llama3", "qwen2"])
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--corpus", help="a text file to train the tokenizer on (one document per line)")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus).read_text(encoding="utf-8").splitlines() if args.corpus else None
    print(build(args.family, args.out_dir, corpus, args.vocab, hidden=args.hidden, layers=args.layers))


if __name__ == "__main__":
    main()
