"""Built-in plugins. Each is an ordinary plugin module, registered exactly
the way a third party's is (``ftcore.plugins_manager``), with its hook
implementations marked ``trylast`` so an installed plugin can override them.

Short name -> module. ``FTCORE_DISABLE_PLUGINS`` takes the short names.
"""

BUILTINS = {
    # Implementations are asked the last registered first, so the later a built-in is listed here the
    # earlier it is asked: the generic loader comes first (asked last), the model families after it,
    # and embeddings last (its prepare_model resizes the vocabulary before any other; a test pins it).
    "huggingface": "ftcore.plugins.huggingface",  # tokenizer, model, collator, trainer via transformers
    "lora": "ftcore.plugins.lora",  # adapter: lora (and qlora's LoRA); the ftcore merge command
    "full": "ftcore.plugins.full",  # no adapter: full fine-tuning
    "qlora": "ftcore.plugins.qlora",  # adapter: qlora, load_in_4bit / load_in_8bit via bitsandbytes
    "vision": "ftcore.plugins.vision",  # Llama 3.2 Vision: processor, model, images, collator
    "distributed": "ftcore.plugins.distributed",  # --nproc launching; deepspeed (ZeRO presets or JSON), fsdp
    "chunked_loss": "ftcore.plugins.chunked_loss",  # chunked_cross_entropy: the training loss without full logits
    "wandb": "ftcore.plugins.wandb",  # wandb_* keys: report the run to Weights & Biases
    "trackers": "ftcore.plugins.trackers",  # report_to, use_tensorboard, mlflow_*: TensorBoard, MLflow, wandb
    "compat_keys": "ftcore.plugins.compat_keys",  # loss watchdog, early stopping, data order, dedup
    "neftune": "ftcore.plugins.neftune",  # neftune_noise_alpha; an installed plugin named neftune replaces it
    "hub_push": "ftcore.plugins.hub_push",  # hub_model_id: push the finished run to the Hugging Face Hub
    "alpaca": "ftcore.plugins.formats.alpaca",
    "completion": "ftcore.plugins.formats.completion",
    "chat_template": "ftcore.plugins.formats.chat_template",
    "sharegpt": "ftcore.plugins.formats.sharegpt",  # the core's chat format with ShareGPT's field names
    "input_output": "ftcore.plugins.formats.input_output",
    "legacy_formats": "ftcore.plugins.formats.legacy",  # Axolotl's older prompt styles: alpaca:chat, jeopardy, ...
    "pretrain": "ftcore.plugins.formats.pretrain",  # documents -> sequence_len chunks
    "chat_templates": "ftcore.plugins.formats.templates",  # llama3(_2_vision), chatml, qwen_25, jinja, ...
    "named_templates": "ftcore.plugins.named_templates",  # Axolotl's template names: gemma3, qwen3, llama4, phi_4, ...
    "loss": "ftcore.plugins.loss",  # evaluator: loss and perplexity
    "lm_eval": "ftcore.plugins.lm_eval",  # evaluator: EleutherAI's lm-evaluation-harness tasks (optional extra)
    "generation": "ftcore.plugins.generation",  # evaluator: generated replies scored (exact_match, chrf, ...)
    "code": "ftcore.plugins.code",  # Qwen2.5-Coder: formats fim, code_repo; evaluator code_exec (pass@k, sandboxed)
    "inference": "ftcore.plugins.inference",  # the ftcore generate and ftcore chat commands
    "recipes": "ftcore.plugins.recipes",  # the recipes shipped with ftcore, by name; recipes list/show/copy, diff
    "models": "ftcore.plugins.models",  # the seed's models: architecture facts, license, gating (register_models)
    "planning": "ftcore.plugins.planning",  # ftcore estimate, ftcore init, ftcore run --dry-run
    "embeddings": "ftcore.plugins.embeddings",  # embeddings follow the tokenizer's added tokens
}
