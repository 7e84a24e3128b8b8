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

# Four small tables of facts. The quickstart teaches them to a model that knows nothing: each
# question is asked in eight phrasings, and the held-out questions are phrasings of each item the
# model never saw during training (every item and every phrasing is trained, only not together).
FACTS = {
    "colour": ({"banana": "yellow", "grass": "green", "the sky": "blue", "snow": "white", "coal": "black",
                "a tomato": "red", "a lemon": "yellow", "a frog": "green", "the sea": "blue", "milk": "white",
                "a crow": "black", "a cherry": "red"},
               ["What colour is {x}?", "Tell me the colour of {x}.", "Which colour does {x} have?",
                "Name the colour of {x}.", "{X} is what colour?", "What is the colour of {x}?",
                "Say the colour of {x}.", "Give the colour of {x} in one word."]),
    "capital": ({"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
                 "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Cuba": "Havana",
                 "Chile": "Santiago", "Poland": "Warsaw"},
                ["What is the capital of {x}?", "Name the capital of {x}.", "Which city is the capital of {x}?",
                 "Tell me the capital city of {x}.", "{X}'s capital is which city?", "Give the capital of {x}.",
                 "What city is {x}'s capital?", "Say the capital of {x} in one word."]),
    "sound": ({"a cow": "moo", "a dog": "woof", "a cat": "meow", "a duck": "quack", "a sheep": "baa",
               "a lion": "roar", "an owl": "hoot", "a snake": "hiss", "a pig": "oink", "a horse": "neigh",
               "a bee": "buzz", "a mouse": "squeak"},
              ["What sound does {x} make?", "What does {x} say?", "Which sound does {x} make?",
               "Name the sound {x} makes.", "Tell me what {x} says.", "How does {x} sound?",
               "Give the sound of {x} in one word.", "Say the sound {x} makes."]),
    "opposite": ({"hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night", "old": "new",
                  "early": "late", "full": "empty", "light": "dark", "open": "closed", "hard": "soft",
                  "happy": "sad"},
                 ["What is the opposite of {x}?", "Name the opposite of {x}.", "Give the opposite of the word {x}.",
                  "Tell me the opposite of {x}.", "Which word means the opposite of {x}?",
                  "Say the opposite of {x}.", "The opposite of {x} is what?", "What word is the opposite of {x}?"]),
}


def quickstart_rows(seed: int = 0) -> list[dict]:
    """Alpaca rows (``instruction``, ``output``): every item of ``FACTS`` in each of its phrasings, shuffled."""
    import random

    rows = []
    for facts, phrasings in FACTS.values():
        for item, answer in facts.items():
            for phrasing in phrasings:
                question = phrasing.replace("{X}", item[0].upper() + item[1:]).replace("{x}", item)
                rows.append({"instruction": question, "output": answer})
    random.Random(seed).shuffle(rows)
    return rows


# The output layer starts 5 times larger than transformers' default initialisation (std 0.02): a
# random network's last hidden state is small, and with the default head even a perfect adapter
# could not make one answer much likelier than the rest. LoRA leaves the head frozen; this scale
# is what a pretrained model's head has, and it is what lets the quickstart learn in seconds.
HEAD_SCALE = 5.0


def build_quickstart(out_dir) -> Path:
    """Write ``tasks.jsonl`` and ``tiny-llama/`` (about 0.85 M parameters, bf16, random weights) into ``out_dir``.

    The tokenizer is trained on the questions and answers, with Llama 3's special tokens and chat
    template; the model is a randomly initialised 4-layer Llama that has learned nothing, so before
    fine-tuning it answers no question, and what it answers after comes from the adapter alone.
    """
    import json

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = quickstart_rows()
    (out / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tokenizer = train_tokenizer("llama3", [f"{r['instruction']} {r['output']}" for r in rows], vocab_size=512)
    model = build_model("llama3", tokenizer, hidden=128, layers=4, intermediate=256, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
    model.to(torch.bfloat16)
    # ftcore pads with the end-of-turn token (Llama 3 has no pad token); the config says so too,
    # so transformers has nothing to "align" at load time
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    model.config.pad_token_id = model.generation_config.pad_token_id = eot
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
