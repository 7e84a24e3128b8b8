"""Axolotl compatibility: every top-level key Axolotl's schema knows.

An Axolotl recipe must validate unchanged, and Axolotl recipes list many keys
blank. So for a key Axolotl knows and ftcore's schema does not:

- ``HINTS``: performance or bookkeeping switches that do not change what is
  trained (fused kernels, dataloader workers, ``debug``). Accepted with any
  value; ``ftcore validate`` lists them as ignored.
- every other Axolotl key: accepted while empty or false; any other value is
  an error saying ftcore does not support it (``ADVICE`` adds what to do
  instead), never silently dropped.

Only key names are listed here, taken from Axolotl's public schema.
"""

AXOLOTL_KEYS = frozenset((
    "accelerator_config", "activation_offloading", "adam_beta1", "adam_beta2", "adam_beta3",
    "adam_epsilon", "adam_epsilon2", "adapter", "added_tokens_overrides", "attn_implementation",
    "auto_find_batch_size", "auto_resume_from_checkpoints", "axolotl_config_path", "base_model",
    "base_model_config", "batch_flattening", "batch_size", "bench_dataset", "bench_split", "bf16",
    "bfloat16", "bnb_config_kwargs", "center_rewards_coefficient", "chat_template",
    "chat_template_jinja", "chat_template_kwargs", "chunked_cross_entropy",
    "chunked_cross_entropy_num_chunks", "cls_model_config", "comet_api_key",
    "comet_experiment_config", "comet_experiment_key", "comet_mode", "comet_online",
    "comet_project_name", "comet_workspace", "context_parallel_size", "cosine_constant_lr_ratio",
    "cosine_min_lr_ratio", "cpo_alpha", "curriculum_sampling", "cut_cross_entropy",
    "cut_cross_entropy_accum_c_fp32", "cut_cross_entropy_c_grad_chunk_size", "dataloader_drop_last",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
    "dataset_exact_deduplication", "dataset_keep_in_memory", "dataset_map_batch_size",
    "dataset_num_proc", "dataset_prepared_path", "dataset_processes", "dataset_shard_idx",
    "dataset_shard_num", "dataset_writer_batch_size", "datasets", "ddp", "ddp_broadcast_buffers",
    "ddp_bucket_cap_mb", "ddp_find_unused_parameters", "ddp_timeout", "debug", "deepcompile",
    "deepspeed", "default_system_message", "device", "device_map", "diffusion_lm", "dion_lr",
    "dion_momentum", "dion_rank_fraction", "dion_rank_multiple_of", "do_bench_eval",
    "do_causal_lm_eval", "dp_replicate_size", "dp_shard_size", "dpo_generate_during_eval",
    "dpo_label_smoothing", "dpo_loss_type", "dpo_loss_weights", "dpo_norm_loss", "dpo_padding_free",
    "dpo_use_liger_kernel", "dpo_use_logits_to_keep", "dpo_use_weighting", "dynamic_checkpoint",
    "eaft_alpha", "eaft_k", "eager_attention", "early_stopping_patience", "ebft", "embedding_lr",
    "embedding_lr_scale", "embeddings_skip_upcast", "eot_tokens", "eval_batch_size",
    "eval_causal_lm_metrics", "eval_max_new_tokens", "eval_sample_packing", "eval_sequence_len",
    "eval_steps", "eval_strategy", "eval_table_max_new_tokens", "eval_table_size",
    "evals_per_epoch", "excess_length_strategy", "experimental_skip_move_to_device",
    "experts_implementation", "export", "fix_untrained_tokens", "flash_attention",
    "flash_attn_cross_entropy", "flash_attn_d512", "flash_attn_fuse_mlp", "flash_attn_fuse_qkv",
    "flash_attn_rms_norm", "flash_optimum", "flex_attention", "flex_attn_compile_kwargs", "float16",
    "float32", "fp16", "fp32_norm_classes", "fp32_norms", "fp8", "fp8_config",
    "fp8_enable_fsdp_float8_all_gather", "freeze_mm_modules", "fsdp", "fsdp_config",
    "fsdp_final_state_dict_type", "fsdp_version", "full_determinism", "fused_attn_kernel",
    "gc_collect_steps", "gc_steps", "gemma4_hybrid_attn_impl", "generate_samples",
    "generation_do_sample", "generation_max_new_tokens", "generation_prompt_ratio",
    "generation_temperature", "generation_top_k", "generation_top_p", "gptq", "gpu_memory_limit",
    "gradient_accumulation_steps", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "gradio_max_new_tokens", "gradio_server_name", "gradio_server_port", "gradio_share",
    "gradio_temperature", "gradio_title", "greater_is_better", "group_by_length", "heads_k_stride",
    "hf_mlflow_log_artifacts", "hf_use_auth_token", "hub_model_id", "hub_revision", "hub_strategy",
    "image_resize_algorithm", "image_size", "include_tkps", "include_tokens_per_second",
    "is_falcon_derived_model", "is_llama_derived_model", "is_mistral_derived_model",
    "is_preprocess", "is_qwen_derived_model", "jagged_restart_anneal_steps", "jagged_restart_steps",
    "jagged_restart_warmup_steps", "kd_normalize_topk", "kd_online_server_model",
    "kto_desirable_weight", "kto_undesirable_weight", "large_head_attention", "layer_offloading",
    "learning_rate", "liger_cross_entropy", "liger_fused_linear_cross_entropy",
    "liger_glu_activation", "liger_layer_norm", "liger_rms_norm", "liger_rope", "liger_swiglu",
    "lisa_layers_attribute", "lisa_n_layers", "lisa_step_interval", "llama4_linearized_experts",
    "lm_eval_batch_size", "lm_eval_post_train", "lm_eval_tasks", "load_best_model_at_end",
    "load_in_4bit", "load_in_8bit", "local_rank", "logging_steps", "lora_alpha", "lora_dropout",
    "lora_embedding_kernel", "lora_fan_in_fan_out", "lora_fp32_gradients", "lora_mlp_kernel",
    "lora_model_dir", "lora_modules_to_save", "lora_o_kernel", "lora_on_cpu", "lora_qkv_kernel",
    "lora_r", "lora_target_linear", "lora_target_modules", "lora_target_parameters",
    "loraplus_lr_embedding", "loraplus_lr_ratio", "loss_watchdog_patience",
    "loss_watchdog_threshold", "low_cpu_mem_usage", "lr_div_factor", "lr_groups",
    "lr_quadratic_warmup", "lr_scheduler", "lr_scheduler_kwargs", "max_grad_norm", "max_memory",
    "max_prompt_len", "max_steps", "mean_resizing_embeddings", "merge_lora", "merge_method",
    "metric_for_best_model", "micro_batch_size", "min_sample_len", "mlflow_experiment_name",
    "mlflow_run_name", "mlflow_tracking_uri", "model_config", "model_config_type", "model_kwargs",
    "model_quantization_config", "model_quantization_config_kwargs", "model_revision", "model_type",
    "multipack_real_batches", "muonclip", "neftune_noise_alpha", "num_dataset_shards_to_save",
    "num_epochs", "num_generation_samples", "num_labels", "optim_args", "optim_target_modules",
    "optimizer", "orpo_alpha", "otel_metrics_host", "otel_metrics_port", "output_dir",
    "pad_to_multiple_of", "pad_to_sequence_len", "peft", "peft_autocast_adapter_dtype",
    "peft_ensure_weight_tying", "peft_init_lora_weights", "peft_layer_replication",
    "peft_layers_pattern", "peft_layers_to_transform", "peft_trainable_token_indices",
    "peft_use_dora", "peft_use_rslora", "ple_cpu_offload", "plugins", "pose_max_context_len",
    "pose_num_chunks", "pose_split_on_token_ids", "precompute_ref_log_probs", "preprocess_iterable",
    "pretrain_multipack_attn", "pretrain_multipack_buffer_size", "pretraining_dataset",
    "pretraining_sample_concatenation", "process_reward_model", "processor_type", "profiler_steps",
    "profiler_steps_start", "push_dataset_to_hub", "qat", "qgalore_cos_threshold",
    "qgalore_gamma_proj", "qgalore_proj_bits", "qgalore_proj_group_size", "qgalore_proj_quant",
    "qgalore_proj_type", "qgalore_queue_size", "qgalore_rank", "qgalore_scale",
    "qgalore_update_proj_gap", "qlora_sharded_model_loading", "quantization",
    "quantize_moe_experts", "ray_num_workers", "ray_run_name", "reinit_weights", "relora",
    "relora_anneal_steps", "relora_cpu_offload", "relora_prune_method", "relora_prune_ratio",
    "relora_steps", "relora_warmup_steps", "remove_unused_columns",
    "resize_token_embeddings_to_32x", "resources_per_worker", "resume_from_checkpoint",
    "reward_model", "ring_attn_func", "rl", "rl_beta", "rpo_alpha", "s2_attention",
    "sage_attention", "sample_packing", "sample_packing_bin_size", "sample_packing_eff_est",
    "sample_packing_group_size", "sample_packing_mp_start_method", "sample_packing_sequentially",
    "save_first_step", "save_only_model", "save_safetensors", "save_steps", "save_strategy",
    "save_total_limit", "saves_per_epoch", "scaling_softmax", "scaling_softmax_bias",
    "scaling_softmax_factor", "sdp_attention", "sdpa_varlen", "seed", "selective_checkpointing",
    "sequence_len", "sequence_parallel_degree", "shrink_embeddings",
    "shuffle_before_merging_datasets", "shuffle_merged_datasets", "simpo_gamma",
    "skip_prepare_dataset", "special_tokens", "spectrum_model_name", "spectrum_top_fraction",
    "streaming", "streaming_multipack_buffer_size", "strict", "tensor_parallel_size",
    "test_datasets", "tf32", "tiled_mlp", "tiled_mlp_num_shards", "tiled_mlp_use_original_mlp",
    "tokenizer_config", "tokenizer_legacy", "tokenizer_save_jinja_files", "tokenizer_type",
    "tokenizer_use_fast", "tokenizer_use_mistral_common", "tokens", "torch_compile",
    "torch_compile_backend", "torch_compile_mode", "torch_compile_options",
    "torch_empty_cache_steps", "torchdistx_path", "total_num_tokens", "total_supervised_tokens",
    "trackio_project_name", "trackio_run_name", "trackio_space_id", "train_on_inputs",
    "trainer_cls", "trl", "trust_remote_code", "unfrozen_parameters", "unsloth_cross_entropy_loss",
    "unsloth_lora_mlp", "unsloth_lora_o", "unsloth_lora_qkv", "unsloth_rms_norm", "unsloth_rope",
    "use_comet", "use_dft", "use_eaft", "use_kernels", "use_mlflow", "use_otel_metrics", "use_pose",
    "use_ray", "use_tensorboard", "use_trackio", "use_wandb", "val_set_size", "vllm",
    "wandb_entity", "wandb_log_model", "wandb_mode", "wandb_name", "wandb_project", "wandb_run_id",
    "wandb_watch", "warmup_ratio", "warmup_steps", "weight_decay", "world_size",
    "xformers_attention",
    # deprecated or removed in Axolotl, still listed by its schema or found in older recipes
    "max_packed_sequence_len", "rope_scaling", "noisy_embedding_alpha", "dpo_beta", "evaluation_strategy",
    "liger_rms_norm_gated", "gptq_groupsize", "gptq_model_v1", "landmark_attention", "xpos_rope",
    "tokenizer_default_fallback", "nf4_backend", "use_onebitllms", "overrides_of_model_config",
    # keys of Axolotl's integrations (its plugins: entries, which ftcore skips): kernels, swanlab, diffusion,
    # llm_compressor
    "use_scattermoe", "use_sonicmoe", "use_glm_dsa_kernels", "use_dsv4_kernels", "autotune_neighborhood",
    "autotune_cache_path", "autotune_profiles", "expert_parallel_size", "expert_parallel_backend",
    "expert_parallel_token_capacity", "expert_parallel_num_nvl_bytes", "nvfp4_merge_aware", "use_swanlab",
    "swanlab_project", "swanlab_experiment_name", "swanlab_description", "swanlab_mode", "swanlab_log_completions",
    "swanlab_completion_max_buffer", "swanlab_completion_log_interval", "swanlab_workspace", "swanlab_log_model",
    "diffusion", "diffusion_decision", "llmcompressor", "moe_bnb_fast", "moe_dequant_chunk_size",
    "dsv4_fp4_grouped_mode",
))

HINTS = frozenset((
    "debug", "strict", "local_rank", "eval_table_max_new_tokens", "eval_max_new_tokens",
    "is_falcon_derived_model", "is_llama_derived_model", "is_mistral_derived_model", "is_qwen_derived_model",
    "save_safetensors", "remove_unused_columns", "dataloader_drop_last",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor", "tokenizer_use_fast",
    "tokenizer_legacy", "tokenizer_save_jinja_files", "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel",
    "lora_embedding_kernel", "liger_rope", "liger_rms_norm", "liger_layer_norm", "liger_glu_activation",
    "liger_swiglu", "liger_rms_norm_gated", "liger_cross_entropy", "liger_fused_linear_cross_entropy", "cut_cross_entropy",
    "cut_cross_entropy_accum_c_fp32", "cut_cross_entropy_c_grad_chunk_size", "flash_attn_cross_entropy",
    "flash_attn_rms_norm", "flash_attn_fuse_qkv", "flash_attn_fuse_mlp", "flash_optimum",
    "sample_packing_eff_est", "total_num_tokens", "total_supervised_tokens", "low_cpu_mem_usage",
    "gpu_memory_limit", "hf_use_auth_token", "torch_compile_backend", "torch_compile_mode",
    "sample_packing_bin_size", "sample_packing_group_size", "sample_packing_mp_start_method",
    "multipack_real_batches", "lora_on_cpu", "embeddings_skip_upcast", "gc_steps", "gc_collect_steps",
    "include_tokens_per_second", "include_tkps", 
    "use_wandb", "resize_token_embeddings_to_32x", "dataset_keep_in_memory", "eval_table_size",
    "xformers_attention", "experimental_skip_move_to_device", "axolotl_config_path", "is_preprocess",
    "num_dataset_shards_to_save", "dataset_writer_batch_size", "dataset_map_batch_size", "profiler_steps",
    "profiler_steps_start", "torch_empty_cache_steps",
    # fused kernels like the lora_*_kernel / liger_* ones: same training, other kernels
    "unsloth_cross_entropy_loss", "unsloth_lora_mlp", "unsloth_lora_o", "unsloth_lora_qkv", "unsloth_rms_norm",
    "unsloth_rope",
    # Axolotl's Gradio chat UI (axolotl inference --gradio): nothing to do with training
    "gradio_max_new_tokens", "gradio_server_name", "gradio_server_port", "gradio_share", "gradio_temperature",
    "gradio_title",
    # speed only: the same model trains (torch.compile is not used; use_kernels / experts_implementation go to
    # from_pretrained, core/loading.py)
    "use_kernels", "experts_implementation", "torch_compile", "torch_compile_options",
    "flex_attn_compile_kwargs",
    # kernel choices for Gemma 4: flash attention on its sliding-window layers, fused q/k/v/o LoRA kernels
    "gemma4_hybrid_attn_impl", "fused_attn_kernel",
    # kernel choices for 4-bit MoE experts (which ftcore's bitsandbytes path keeps 16-bit anyway)
    "moe_bnb_fast", "moe_dequant_chunk_size",
    # Axolotl's kernels integration: MoE and attention kernels, autotuning
    "use_scattermoe", "use_sonicmoe", "use_glm_dsa_kernels", "use_dsv4_kernels", "autotune_neighborhood",
    "autotune_cache_path", "autotune_profiles",
    # accepted with a note (HINT_NOTES): what ftcore does instead
    "tokenizer_use_mistral_common", "activation_offloading", "quantize_moe_experts",
))

# Hints whose value a user should hear about: what ftcore does instead (printed by validate, run, preprocess).
HINT_NOTES = {
    "torch_compile": "torch_compile: the model trains uncompiled (the same result, slower)",
    "tokenizer_use_mistral_common": "tokenizer_use_mistral_common: ftcore tokenizes with the model's Hugging Face "
                                    "tokenizer and the recipe's chat_template (else the tokenizer's own), not "
                                    "mistral-common; a repository with no tokenizer.json stops when the tokenizer "
                                    "loads",
    "quantize_moe_experts": "quantize_moe_experts: the fused expert weights stay in 16-bit (bitsandbytes in ftcore "
                            "quantizes linear layers only), so the model needs far more GPU memory than in Axolotl; "
                            "the adapters train the same targets",
    "activation_offloading": "activation_offloading: activations stay on the GPU (ftcore does not offload them; "
                             "gradient_checkpointing: true saves activation memory)",
}

ADVICE = {
    "load_best_model_at_end": "the run keeps the last model",
}


# Axolotl keys that ftcore's built-in plugins own (recipe_keys). When the owning plugin is absent or
# disabled, such a key set in a recipe is reported as a missing feature, not as unsupported by ftcore.
PLUGIN_FEATURES = {
    **{key: "LoRA" for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear",
                               "lora_modules_to_save", "lora_model_dir", "lora_fan_in_fan_out", "peft_use_dora",
                               "peft_use_rslora", "peft_layers_to_transform", "lora_target_parameters")},
    **{key: "quantization" for key in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                                       "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage", "bnb_config_kwargs")},
    **{key: "multi-GPU engines" for key in ("deepspeed", "fsdp", "fsdp_config", "fsdp_version", "ddp_timeout",
                                            "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
                                            "ddp_find_unused_parameters")},
    **{key: "vision models" for key in ("processor_type", "image_size", "image_resize_algorithm",
                                        "freeze_mm_modules")},
    **{key: "Weights & Biases tracking" for key in ("wandb_project", "wandb_entity", "wandb_name", "wandb_run_id",
                                                    "wandb_watch", "wandb_log_model", "wandb_mode")},
    **{key: "experiment tracking (TensorBoard, MLflow)" for key in ("use_tensorboard", "use_mlflow",
                                                                   "mlflow_tracking_uri", "mlflow_experiment_name",
                                                                   "mlflow_run_name", "hf_mlflow_log_artifacts")},
    "unfrozen_parameters": "training chosen base parameters (the full plugin)",
    "neftune_noise_alpha": "NEFTune (the neftune plugin)",
    **{key: "the loss watchdog, early stopping and data-order keys (the compat_keys plugin)"
       for key in ("loss_watchdog_threshold", "loss_watchdog_patience", "early_stopping_patience",
                   "shuffle_merged_datasets", "shuffle_before_merging_datasets",
                   "skip_prepare_dataset", "dataset_exact_deduplication")},
    **{key: "pushing to the Hugging Face Hub (the hub_push plugin)"
       for key in ("hub_model_id", "hub_strategy", "hub_revision", "push_dataset_to_hub")},
    "overrides_of_model_config": "model config overrides (the huggingface plugin)",
    "chunked_cross_entropy": "the chunked loss",
    **{key: "conversation formats (the chat_template plugin)" for key in ("eot_tokens", "chat_template_kwargs")},
}


# Values that mean "off" for a key ftcore does not implement: as good as leaving the key empty.
OFF_VALUES = {
    "cosine_constant_lr_ratio": (0,),
    "context_parallel_size": (1,),
    "sequence_parallel_degree": (1,),
    "tensor_parallel_size": (1,),
    "dp_shard_size": (1,),
    "dp_replicate_size": (1,),
    "heads_k_stride": (1,),
    "world_size": (1,),
    "lisa_n_layers": (0,),
    "relora_steps": (0,),
    "max_packed_sequence_len": (0,),
    "fix_untrained_tokens": (0,),
    "nf4_backend": ("bitsandbytes",),  # what load_in_4bit uses anyway
    "ddp": (True,),  # "use DDP": what several processes do anyway
    "eval_causal_lm_metrics": (),
    "dpo_use_weighting": (),
}


def is_empty(value) -> bool:
    """``None``, false, "", [] or {}: a key left blank (0 is a value)."""
    return value is None or value is False or value == "" or value == [] or value == {}


def is_off(key: str, value) -> bool:
    """Empty (``is_empty``) or a value that means "off" for ``key``."""
    if is_empty(value):
        return True
    return any(value == off and type(value) is not bool or value is off for off in OFF_VALUES.get(key, ()))


# Keys ftcore does not implement, grouped by the feature they belong to. Each group says the feature in a
# user's words, what training without the key changes, and whether a plugin could add the feature.
# (feature, what removing the key changes, a plugin could provide it, keys, key prefixes)
FEATURES = (
    ("preference tuning (DPO/KTO/ORPO/SimPO/GRPO)",
     "without it this recipe would train supervised on the data, which is not what it means",
     True, ("rl", "rl_beta", "dpo_beta", "orpo_alpha", "rpo_alpha", "simpo_gamma", "cpo_alpha",
            "center_rewards_coefficient", "precompute_ref_log_probs", "trl", "vllm", "max_prompt_len"),
     ("dpo_", "kto_")),
    ("reward-model and classification training",
     "without it the model would train as a language model, which is not what this recipe means",
     True, ("reward_model", "process_reward_model", "num_labels", "cls_model_config"), ()),
    ("knowledge distillation", "without it the model trains on the data's labels alone, not on a teacher's",
     True, ("kd_online_server_model", "kd_normalize_topk"), ("kd_",)),
    ("mixture-of-experts kernels", "removing it trains the same model with transformers' standard expert "
     "layers (slower, more memory)", True,
     ("llama4_linearized_experts", "dsv4_fp4_grouped_mode"), ()),
    ("tensor parallelism", "removing it trains with data parallelism only: every GPU holds the whole model, "
     "which may not fit in memory", True, ("tensor_parallel_size",), ()),
    ("context / sequence parallelism (ring attention)", "removing it keeps each sequence whole on one GPU, "
     "which may not fit in memory for long sequences", True,
     ("context_parallel_size", "sequence_parallel_degree", "ring_attn_func", "heads_k_stride"), ()),
    ("N-D parallelism (dp_shard_size / dp_replicate_size)", "removing it lets fsdp or deepspeed shard across "
     "every process (ftcore run --nproc N)", True, ("dp_shard_size", "dp_replicate_size", "world_size"), ()),
    ("torch.compile", "removing it trains the same model uncompiled (slower, same result)", True,
     ("deepcompile",), ()),
    ("expert parallelism", "removing it keeps every expert on every GPU, which may not fit in memory", True,
     (), ("expert_parallel_",)),
    ("ReLoRA (periodic merge and restart of the adapter)", "removing it trains one plain LoRA adapter for the "
     "whole run", True, ("relora",), ("relora_", "jagged_restart_")),
    ("LISA (training a random few layers at a time)", "removing it trains every layer at every step", True,
     (), ("lisa_",)),
    ("quantization-aware training (QAT)", "removing it trains without simulated quantization, so the model is "
     "not prepared for low-bit deployment", True, ("qat", "nvfp4_merge_aware"), ()),
    ("post-training quantization of the trained model", "removing it saves the trained model unquantized",
     True, ("quantization",), ()),
    ("FP8 training", "removing it trains in the recipe's bf16/fp16 precision (more memory, a little slower)",
     True, ("fp8", "fp8_config", "fp8_enable_fsdp_float8_all_gather"), ()),
    ("pre-quantized base models (GPTQ, MXFP4, ...)", "removing it loads the base as a 16-bit model, which fails "
     "for a checkpoint stored quantized; use a 16-bit base with load_in_4bit and adapter: qlora instead", True,
     ("gptq", "gptq_groupsize", "gptq_model_v1", "model_quantization_config",
      "model_quantization_config_kwargs"), ()),
    ("1.58-bit (BitNet) models through onebitllms", "removing it loads the model as an ordinary 16-bit one, "
     "which is not what a BitNet checkpoint is", True, ("use_onebitllms",), ()),
    ("this 4-bit backend", "removing it quantizes with bitsandbytes (load_in_4bit), the one backend ftcore uses",
     True, ("nf4_backend",), ()),
    ("PoSE (positional skip-wise context extension)", "removing it trains on the sequences as they are, "
     "without simulated longer positions", True, ("use_pose",), ("pose_",)),
    ("Spectrum (training only the layers with the best signal-to-noise ratio)", "removing it trains every "
     "parameter", True, (), ("spectrum_",)),
    ("LoRA+ (a higher learning rate for LoRA's B matrices)", "removing it trains both LoRA matrices at "
     "learning_rate", True, ("loraplus_lr_ratio", "loraplus_lr_embedding"), ()),
    ("per-group learning rates", "removing it trains every parameter at learning_rate", True,
     ("lr_groups", "embedding_lr", "embedding_lr_scale"), ()),
    ("this optimizer option", "removing it trains with the optimizer's standard settings", True,
     ("optim_args", "optim_target_modules", "adam_beta3", "adam_epsilon2", "muonclip"), ("dion_", "qgalore_")),
    ("this learning-rate schedule option", "removing it trains with the schedule lr_scheduler names, "
     "unchanged", False, ("lr_quadratic_warmup", "lr_div_factor", "cosine_constant_lr_ratio"), ()),
    ("an alternative training objective", "removing it trains with the standard next-token cross-entropy",
     True, ("use_dft", "use_eaft", "eaft_alpha", "eaft_k", "ebft", "diffusion_lm", "diffusion", "llmcompressor"),
     ("diffusion_",)),
    ("this attention variant", "removing it trains with attn_implementation (default sdpa)", True,
     ("s2_attention", "sage_attention", "scaling_softmax", "scaling_softmax_bias", "scaling_softmax_factor",
      "large_head_attention", "flash_attn_d512", "sdpa_varlen",
      "landmark_attention", "xpos_rope"), ()),
    ("activation and layer offloading", "removing it keeps activations and layers on the GPU (more memory, "
     "same result); gradient_checkpointing: true saves memory too", True,
     ("layer_offloading", "ple_cpu_offload", "dynamic_checkpoint",
      "selective_checkpointing", "tiled_mlp", "tiled_mlp_num_shards", "tiled_mlp_use_original_mlp"), ()),
    ("Ray clusters", "removing it runs on this machine (ftcore run --nproc N for several GPUs)", True,
     ("use_ray", "ray_num_workers", "ray_run_name", "resources_per_worker"), ()),
    ("this experiment tracker (Comet, Trackio, SwanLab, OpenTelemetry)", "removing it trains the same; the metrics "
     "still go to the run folder's log (and to W&B, TensorBoard or MLflow when set)", True,
     ("use_comet", "use_trackio", "use_otel_metrics", "otel_metrics_host", "otel_metrics_port", "use_swanlab"),
     ("comet_", "trackio_", "swanlab_")),
    ("benchmark and generation evaluation during training", "removing it trains the same; evaluation reports "
     "the loss (the lm_eval: and generation: sections of ftcore do benchmark and sample evaluation)", True,
     ("do_bench_eval", "bench_dataset", "bench_split", "do_causal_lm_eval", "eval_causal_lm_metrics",
      "generate_samples", "num_generation_samples", "metric_for_best_model", "greater_is_better",
      "load_best_model_at_end", "lm_eval_tasks", "lm_eval_batch_size", "lm_eval_post_train"),
     ("generation_",)),
    ("streaming and pretraining data pipelines", "removing it reads the datasets: entries in full "
     "(type: completion for raw text)", True,
     ("streaming", "streaming_multipack_buffer_size", "pretraining_dataset", "pretraining_sample_concatenation",
      "pretrain_multipack_attn", "pretrain_multipack_buffer_size", "preprocess_iterable"), ()),
    ("this data-ordering option", "removing it trains on the same rows in the trainer's usual (shuffled) order",
     False, ("curriculum_sampling", "sample_packing_sequentially", "batch_flattening"), ()),
    ("dataset sharding", "removing it trains on the whole dataset (the datasets: entry's shards: key reads a "
     "fraction of one)", False, ("dataset_shard_num", "dataset_shard_idx"), ()),
    ("this model-loading option", "removing it loads the model as transformers does by default", True,
     ("device_map", "max_memory", "device", "model_kwargs", "model_config_type", "ddp",
      "qlora_sharded_model_loading"), ()),
    ("this embedding option", "removing it keeps the embeddings as loaded (new tokens are initialised by "
     "transformers)", True, ("fix_untrained_tokens", "added_tokens_overrides", "mean_resizing_embeddings",
                            "shrink_embeddings", "reinit_weights"), ()),
    ("this peft option", "removing it trains the adapter with peft's defaults", True,
     ("peft", "peft_autocast_adapter_dtype", "peft_ensure_weight_tying", "peft_init_lora_weights",
      "peft_layer_replication", "peft_layers_pattern", "peft_trainable_token_indices", "lora_fp32_gradients"),
     ()),
    ("merging or exporting at the end of training", "removing it keeps the adapter separate; run "
     "`ftcore merge RUN_DIR` afterwards to merge it", False, ("merge_lora", "merge_method", "export"), ()),
    ("pure (non-mixed) low-precision weights", "removing it trains with mixed precision as bf16 / fp16 set it",
     True, ("bfloat16", "float16", "float32"), ()),
    ("keeping chosen layers in fp32", "removing it keeps every layer in the run's precision (norm layers of a "
     "quantized base are kept in fp32 anyway)", True, ("fp32_norms", "fp32_norm_classes"), ()),
    ("a separate evaluation sequence length", "removing it evaluates at sequence_len", False,
     ("eval_sequence_len",), ()),
    ("the trainer class or the profiler", "removing it trains with ftcore's standard trainer", False,
     ("trainer_cls", "accelerator_config", "full_determinism", "auto_find_batch_size", "torchdistx_path",
      "save_first_step", "min_sample_len", "pad_to_multiple_of",
      "chunked_cross_entropy_num_chunks"), ()),
)

DEPRECATED = {
    "max_packed_sequence_len": "sample_packing: true",
    "rope_scaling": "overrides_of_model_config: {rope_scaling: ...}",
    "noisy_embedding_alpha": "neftune_noise_alpha",
    "dpo_beta": "rl_beta",
    "evaluation_strategy": "eval_strategy",
    "flash_attn_rms_norm": None,
    "tokenizer_default_fallback": "chat_template: tokenizer_default_fallback_NAME",
}


def feature_of(key: str):
    """``(feature, what removing it changes, a plugin could provide it)`` for a grouped key, else None."""
    for feature, effect, pluggable, keys, prefixes in FEATURES:
        if key in keys or key.startswith(prefixes or ("\0",)):
            return feature, effect, pluggable
    return None


def unsupported_message(key: str, value) -> str:
    """Why ftcore refuses Axolotl's ``key`` set to ``value``: the feature, and what removing the key changes."""
    import json

    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if key in DEPRECATED:
        instead = DEPRECATED[key]
        return (f"Axolotl's '{key}' is deprecated (Axolotl no longer supports it either)"
                + (f"; use {instead}" if instead else "") + "; leave it empty or remove it")
    found = feature_of(key)
    if found is None:
        advice = ADVICE.get(key, "remove it or leave it empty")
        return f"Axolotl's '{key}' is not supported by ftcore: {advice}"
    feature, effect, pluggable = found
    extra = f" ({ADVICE[key]})" if key in ADVICE else ""
    plugin = "; a plugin could provide it (see docs/plugins.md)" if pluggable else ""
    return f"{shown} — {feature} is not supported by ftcore yet{extra}; {effect}{plugin}"
