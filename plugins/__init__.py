"""Built-in plugins. Each is an ordinary plugin module, registered exactly
the way a third party's is (``ftcore.plugins_manager``), with its hook
implementations marked ``trylast`` so an installed plugin can override them.

Short name -> module. ``FTCORE_DISABLE_PLUGINS`` takes the short names.
"""

BUILTINS = {
    # qlora before huggingface: prepare_model implementations run last-registered first, and
    # k-bit preparation must follow the embedding resize in huggingface's
    "qlora": "ftcore.plugins.qlora",  # adapter: qlora, load_in_4bit / load_in_8bit via bitsandbytes
    # vision before huggingface: among trylast implementations the earlier registered is asked first
    "vision": "ftcore.plugins.vision",  # Llama 3.2 Vision: processor, model, images, exact_match evaluator
    "huggingface": "ftcore.plugins.huggingface",  # tokenizer, model, collator via transformers
    "lora": "ftcore.plugins.lora",  # adapter: lora
    "full": "ftcore.plugins.full",  # no adapter: full fine-tuning
    "distributed": "ftcore.plugins.distributed",  # deepspeed (ZeRO presets or JSON), fsdp / fsdp_config
    "alpaca": "ftcore.plugins.formats.alpaca",
    "completion": "ftcore.plugins.formats.completion",
    "chat_template": "ftcore.plugins.formats.chat_template",
    "sharegpt": "ftcore.plugins.formats.sharegpt",  # chat_template's function with ShareGPT's field names
    "input_output": "ftcore.plugins.formats.input_output",
    "pretrain": "ftcore.plugins.formats.pretrain",  # documents -> sequence_len chunks
    "fim": "ftcore.plugins.formats.fim",  # source code -> fill-in-the-middle examples (Qwen2.5-Coder tokens)
    "code_repo": "ftcore.plugins.formats.code_repo",  # a repository's files as one document
    "chat_templates": "ftcore.plugins.formats.templates",  # llama3(_2_vision), chatml, qwen_25, jinja, ...
    "loss": "ftcore.plugins.loss",  # evaluator: loss and perplexity
    "code": "ftcore.plugins.code",  # evaluator: code_exec (pass@k of generated code, run in a sandbox)
    "recipes": "ftcore.plugins.recipes",  # the recipes shipped with ftcore, by name
}
