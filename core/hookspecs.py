"""Every hook of the ftcore contract, in the order a run calls them.

A plugin is a module (or object) with functions marked ``@ftcore.hookimpl``
whose names match the specs below. It implements only the hooks it needs.
``tryfirst``, ``trylast`` and ``specname`` work as in pluggy; hook wrappers
(``wrapper=True``, ``hookwrapper=True``) are refused, because the core calls
each implementation itself to name the plugin when one fails.

When the hooks fire during ``ftcore run``::

    discovery ─ recipe_sections, register_recipes, register_commands,
                register_dataset_formats, register_chat_templates,
                register_evaluators                              (once, at start-up)
    recipe    ─ validate_recipe                                  (after the schema)
    training  ─ trainer_arguments                                (before any loading)
    tokenizer ─ load_tokenizer
    data      ─ (formats registered above turn rows into tokens and labels)
    quantize  ─ quantization_config
    model     ─ load_model
    prepare   ─ prepare_model
    adapter   ─ inject_adapter
    collate   ─ build_collator
    training  ─ trainer_callbacks, then transformers.Trainer.train()
    evaluate  ─ evaluators registered above, on the validation split
    save      ─ save_artifacts

Two kinds of hook:

- *firstresult*: one plugin decides. Plugins are asked in turn (the last
  registered first; built-ins are ``trylast`` so an installed plugin wins);
  the first answer that is not ``None`` is used. ``None`` means "not me, ask
  the next plugin".
- *register*: many plugins contribute by calling ``register(...)``. The core
  records who registered what and reports a name registered twice with both
  plugins' names.

The contract version is ``ftcore.CONTRACT_VERSION``; a test fails when a spec
here lacks a docstring.
"""

from ftcore import hookspec

# ─── Recipe: the schema, named recipes, extra checks ────────────────────────


@hookspec
def recipe_sections(register):
    """Contribute a typed, namespaced section to the recipe schema.

    Called once at start-up, before any recipe is validated.

    :param register: ``register(key, model)``: ``key`` is the top-level recipe
        key the plugin owns (for example ``"my_plugin"``) and ``model`` a
        pydantic ``BaseModel`` subclass that validates it. Unknown keys inside
        the section are errors, reported with the rest of the recipe's. The
        validated section is available as ``recipe.section(key)``; when the
        recipe omits it, that is the model's defaults, or ``None`` if the
        model has required keys.
    :return: ``None``.
    """


@hookspec
def register_recipes(register):
    """Make recipes available by name, as in ``ftcore run my-recipe``.

    Called once at start-up; ``extends: my-recipe`` finds them too.

    :param register: ``register(name, path)``: ``path`` is a YAML file.
    :return: ``None``.
    """


@hookspec
def validate_recipe(recipe, error):
    """Check rules that span several keys, after the schema accepted the recipe.

    Called by ``ftcore validate`` and at the start of ``ftcore run``, before
    anything is loaded. Every plugin is called; all errors are reported
    together.

    :param recipe: the validated ``ftcore.recipe.Recipe`` (read-only).
    :param error: ``error(key_path, message)`` records one problem; say what
        is allowed or how to fix it.
    :return: ``None``.
    """


# ─── CLI ─────────────────────────────────────────────────────────────────────


@hookspec
def register_commands(register):
    """Add a subcommand to the ``ftcore`` CLI.

    Called once when the CLI starts, before arguments are parsed; keep the
    import of your plugin module cheap (no torch at module level).

    :param register: ``register(name, help, configure, handler)``:
        ``configure(parser)`` adds arguments to an ``argparse`` parser,
        ``handler(args)`` runs the command and returns an exit code.
    :return: ``None``.
    """


# ─── Tokenizer and processor ────────────────────────────────────────────────


@hookspec(firstresult=True)
def load_tokenizer(recipe):
    """Load the tokenizer (or multimodal processor) for the recipe.

    Called first of the loading steps (after ``trainer_arguments``).
    firstresult: the first non-``None`` answer wins.
    The built-in answer uses ``AutoTokenizer`` on ``tokenizer_config`` or
    ``base_model``.

    :param recipe: the validated recipe.
    :return: a tokenizer/processor with ``save_pretrained``, or ``None`` to
        let another plugin answer.
    """


# ─── Quantization ───────────────────────────────────────────────────────────


@hookspec(firstresult=True)
def quantization_config(recipe):
    """Choose how the base model's weights are quantized when loaded.

    Called after the data is prepared and before ``load_model``.
    firstresult.

    :param recipe: the validated recipe.
    :return: a ``transformers`` quantization config (for example
        ``BitsAndBytesConfig``) passed to ``load_model``, or ``None``. When
        every plugin answers ``None`` the model loads unquantized; the core
        reports an error if the recipe asked for ``load_in_4bit`` or
        ``load_in_8bit`` and nobody answered.
    """


# ─── Model ──────────────────────────────────────────────────────────────────


@hookspec(firstresult=True)
def load_model(recipe, quantization_config):
    """Load the base model.

    Called after ``quantization_config``. firstresult. The built-in answer
    uses ``AutoModelForCausalLM`` with the recipe's dtype and attention
    implementation.

    :param recipe: the validated recipe.
    :param quantization_config: what ``quantization_config`` returned, or
        ``None``.
    :return: a ``torch.nn.Module`` (usually a ``PreTrainedModel``), or
        ``None`` to let another plugin answer.
    """


@hookspec
def prepare_model(recipe, model, tokenizer):
    """Prepare the loaded model for training, in place.

    Called after ``load_model`` and before ``inject_adapter``; every plugin is
    called. Typical work: k-bit preparation, freezing modules, gradient
    checkpointing, resizing embeddings to the tokenizer.

    :param recipe: the validated recipe.
    :param model: the model from ``load_model``; change it in place.
    :param tokenizer: what ``load_tokenizer`` returned (after added tokens).
    :return: ``None``.
    """


# ─── Adapter ────────────────────────────────────────────────────────────────


@hookspec(firstresult=True)
def inject_adapter(recipe, model):
    """Wrap the prepared model with the recipe's adapter (or decide on none).

    Called after ``prepare_model``. firstresult: the plugin that handles
    ``recipe.adapter`` returns the model to train (a ``PeftModel`` for
    ``lora``; the model itself for full fine-tuning, ``adapter`` absent).

    :param recipe: the validated recipe.
    :param model: the prepared model.
    :return: the model to train, or ``None`` when this plugin does not handle
        ``recipe.adapter``. If nobody answers, the run stops with "no plugin
        provides adapter ...".
    """


# ─── Data ───────────────────────────────────────────────────────────────────


@hookspec
def register_dataset_formats(register):
    """Provide dataset formats, selected in a recipe by ``datasets[].type``.

    Called once at start-up.

    :param register: ``register(name, function, options=None)``.
        ``function(row, dataset, ctx)`` turns one row (a dict) into either a
        list of ``(text, trained)`` segments, which the core tokenizes once
        and labels by character span, or a dict with ``input_ids`` and
        ``labels`` (``-100`` for untrained positions) for full control.
        ``dataset`` is the validated dataset entry (its format options are
        attributes), ``ctx`` a ``ftcore.data.FormatContext`` (tokenizer,
        recipe, chat template). Raise ``ftcore.data.RowError(message)`` for a
        bad row; the core adds the file and row number. ``options`` is a
        pydantic model of the format's own keys in the dataset entry (unknown
        keys are errors).

        A format whose examples are not one per row gives ``function`` a
        ``combine`` attribute: ``combine(items, dataset, ctx)`` is called once
        per dataset entry with ``[(origin, example)]`` for its good rows in row
        order (``origin`` is the row's ``(file, row number)``) and returns the
        entry's examples as ``[(origin, example)]``, naming each after the row
        it starts in. The length and no-trained-token rules apply to what it
        returns. ``type: pretrain`` concatenates documents and cuts them into
        ``sequence_len`` chunks this way.

        A recipe may also name an unregistered ``module.function`` as its
        ``type``; that function is imported during validation and called the
        same way (``ftcore/data/formats.py``).
    :return: ``None``.
    """


@hookspec
def register_chat_templates(register):
    """Provide chat templates, selected in a recipe by ``chat_template: name``.

    Called once at start-up.

    :param register: ``register(name, template)``: ``template`` is a Jinja
        string in the Hugging Face chat-template dialect, or a callable
        ``template(tokenizer, recipe) -> str`` (``None`` from the callable
        means "no template": formats that need one then report it).
    :return: ``None``.
    """


@hookspec(firstresult=True)
def build_collator(recipe, tokenizer):
    """Build the function that turns a list of tokenized examples into a batch.

    Called after the adapter is injected. firstresult. The built-in collator
    pads ``input_ids`` with the pad token, ``labels`` with ``-100`` and builds
    the attention mask; for packed data (``sample_packing``) it lays out
    ``[rows, sequence_len]`` bins with ``position_ids`` restarting at each
    example and no attention mask, so examples never attend to each other.

    :param recipe: the validated recipe.
    :param tokenizer: what ``load_tokenizer`` returned.
    :return: ``collate(examples) -> dict of tensors``, or ``None``.
    """


# ─── Training ───────────────────────────────────────────────────────────────


@hookspec
def trainer_arguments(recipe):
    """Add or change ``transformers.TrainingArguments`` for this run.

    Called before anything is loaded, so a wrong setting fails in seconds.
    Every plugin is called. The core maps the recipe's standard keys first;
    recipe keys ``deepspeed`` and ``fsdp`` must be claimed here by a plugin.

    :param recipe: the validated recipe.
    :return: a dict of ``TrainingArguments`` keyword arguments to set, or
        ``None``. Two plugins setting the same argument to different values is
        an error naming both.
    """


@hookspec
def trainer_callbacks(recipe, register):
    """Attach ``transformers.TrainerCallback`` objects to the trainer.

    Called after the collator is built, just before the trainer is created.

    :param recipe: the validated recipe.
    :param register: ``register(callback)`` with a ``TrainerCallback``
        instance.
    :return: ``None``.
    """


# ─── Evaluation ─────────────────────────────────────────────────────────────


@hookspec
def register_evaluators(register):
    """Provide evaluators, selected in a recipe by name under ``evaluators:``.

    Called once at start-up. Evaluators run on the validation split at each
    evaluation (``eval_steps`` / ``evals_per_epoch``, at the start with
    ``eval_on_start``, and at the end of training).

    :param register: ``register(name, function)``. ``function(ctx)`` gets a
        ``ftcore.evaluation.EvalContext`` (model, tokenizer, recipe, dataset,
        collator, batch size) and returns a dict of metric name to number;
        the core prefixes names with ``eval_`` and logs them.
    :return: ``None``.
    """


# ─── Saving ─────────────────────────────────────────────────────────────────


@hookspec
def save_artifacts(recipe, model, tokenizer, output_dir):
    """Write extra files into the run folder after the model is saved.

    Called once at the end of training on the main process, after the core
    wrote the adapter or model, the tokenizer, ``recipe.yaml`` and before
    ``run.json``. Every plugin is called.

    :param recipe: the validated recipe.
    :param model: the trained model (a ``PeftModel`` under an adapter).
    :param tokenizer: what ``load_tokenizer`` returned.
    :param output_dir: a ``pathlib.Path``; write only inside it.
    :return: a list of file names written (recorded in ``run.json``), or
        ``None``.
    """
