"""Every hook of the ftcore contract, declared in the order a run calls them.

A plugin is a module (or object) with functions marked ``@ftcore.hookimpl``
whose names match the specs below. It implements only the hooks it needs, and
an implementation may take any subset of a spec's parameters. ``tryfirst``,
``trylast`` and ``specname`` work as in pluggy; hook wrappers
(``wrapper=True``, ``hookwrapper=True``) are refused, because the core calls
each implementation itself to name the plugin when one fails.

When the hooks fire (docs/hooks.md has the same picture, kept equal by a test)::

    start-up  ─ recipe_keys, recipe_sections, register_adapters,
                register_recipes, register_models, register_commands,
                register_dataset_formats, register_content_parts,
                register_chat_templates, register_evaluators   (registrations, collected once)
    recipe    ─ validate_recipe                                 (after the schema)
    launch    ─ launch_processes                                (ftcore run, once, before any process trains)
              ─ dry_run                                         (ftcore run --dry-run, instead of the launch and the run)
    run       ─ run_started                                     (each process, before anything loads)
              ─ trainer_arguments
              ─ load_tokenizer
              ─ (dataset formats and content parts turn rows into examples)
              ─ quantization_config
              ─ load_model
              ─ prepare_model
              ─ inject_adapter
              ─ build_collator
              ─ trainer_callbacks
              ─ training_loss
              ─ build_trainer, then trainer.train()
              ─ (evaluators, at each evaluation)
              ─ save_artifacts
              ─ run_finished                                    (each process, also after a failure)
    later     ─ load_tokenizer, quantization_config, load_model (a run folder: ftcore eval, generate, chat)
              ─ load_trained_weights

Three kinds of hook:

- *firstresult*: one plugin decides. Plugins are asked in turn (``tryfirst``
  ones, then the others, then ``trylast`` ones, each group the last
  registered first; built-ins are ``trylast`` and registered first, so an
  installed plugin wins);
  the first answer that is not ``None`` is used. ``None`` means "not me, ask
  the next plugin".
- *register*: many plugins contribute by calling ``register(...)``. The core
  records who registered what and reports a name registered twice with both
  plugins' names. Registrations are collected once per plugin manager (again
  after a recipe's ``plugins:`` join): register the same things every time.
- *all*: every implementation is called, in the same order.

``stash`` is the run's ``ftcore.api.Stash``: typed state shared between the
hooks of one run (``core/stash.py``), never attributes on transformers
objects or module globals.

The contract version is ``ftcore.CONTRACT_VERSION``; a test fails when a spec
here lacks a docstring, and another when docs/hooks.md disagrees with one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ftcore import hookspec

if TYPE_CHECKING:  # the contract's types, for readers and type checkers; nothing heavy is imported at run time
    from pathlib import Path

    import torch
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

    from ftcore.evaluation import EvalContext
    from ftcore.launch import Plan
    from ftcore.recipe.schema import Recipe
    from ftcore.stash import Stash

    Register = Callable[..., None]
    ErrorSink = Callable[[str, str], None]
    Collator = Callable[[list[dict]], dict]
    Evaluator = Callable[[EvalContext], dict]
    LossFunction = Callable[..., Any]

# ─── Start-up: registrations (collected once per plugin manager) ──────────────


@hookspec
def recipe_keys(register: Register) -> None:
    """Own flat top-level recipe keys, in Axolotl's style (``lora_r``, ``load_in_4bit``, ``deepspeed``).

    Called once at start-up, before any recipe is validated, with the other
    registrations.

    :param register: ``register(model)``: ``model`` is a pydantic ``BaseModel``
        class whose fields are top-level recipe keys the plugin owns, with
        their types, defaults and descriptions. The fields are validated with
        the rest of the recipe (every problem reported at once) and read as
        ``recipe.<key>``, or ``recipe.get("<key>")`` by code that runs when the
        plugin may be absent. A key owned by the core schema or by another
        plugin is an error naming both. Rules among the model's own keys go
        in its ``cross_checks()`` (``ftcore.api.RecipeKeys``), reported with
        every other problem; rules that need the whole recipe belong in
        ``validate_recipe``. A plugin's keys are written to a run's
        ``recipe.yaml`` only when the recipe set one of them or the plugin
        answered a one-plugin-decides hook of the run (it was used).
    :return: ``None``.
    """


@hookspec
def recipe_sections(register: Register) -> None:
    """Contribute a typed, namespaced section to the recipe schema.

    Called once at start-up, after ``recipe_keys``, before any recipe is
    validated.

    :param register: ``register(key, model)``: ``key`` is the top-level recipe
        key the plugin owns (for example ``"my_plugin"``) and ``model`` a
        pydantic ``BaseModel`` subclass that validates it. Unknown keys inside
        the section are errors, reported with the rest of the recipe's. The
        validated section is available as ``recipe.section(key)``; when the
        recipe omits it (or leaves it blank or ``null``), that is the model's
        defaults, or ``None`` if the model has required keys. A section is
        written to a run's ``recipe.yaml`` only when the recipe set it or the
        plugin answered a one-plugin-decides hook of the run (it was used).
    :return: ``None``.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Name the values ``adapter:`` may take (``lora``, ``qlora``, ...).

    Called once at start-up. A recipe's ``adapter`` must be a registered name
    (absent means full fine-tuning); the plugin that registers a name, or
    another, answers ``inject_adapter`` for it.

    :param register: ``register(name, description)``.
    :return: ``None``.
    """


@hookspec
def register_recipes(register: Register) -> None:
    """Make recipes available by name, as in ``ftcore run my-recipe``.

    Called once at start-up; ``extends: my-recipe`` finds them too.

    :param register: ``register(name, path)``: ``path`` is a YAML file.
    :return: ``None``.
    """


@hookspec
def register_models(register: Register) -> None:
    """Describe models by their Hub id: architecture, size, license, gating, task.

    Called once at start-up. ``ftcore estimate`` works out memory from these
    facts without downloading anything, ``ftcore init`` picks a model from
    them, ``ftcore recipes show`` prints the license, and ``--dry-run`` builds
    a tiny model of the same architecture. A plugin for a new model family
    registers its models here; ``ftcore.api.registered_models(plugins)`` and
    ``ftcore.api.model_facts(plugins, model_id)`` read them back.

    :param register: ``register(model_id, *, family, task, size, parameters,
        license, license_url, gated, config, notes="")``: ``task`` is
        ``"chat"``, ``"code"`` or ``"vision"``; ``parameters`` the published
        count; ``config`` the model's ``config.json`` content (what the
        architecture needs: ``model_type``, ``architectures``, sizes, vocabulary,
        rope settings; nested ``text_config``/``vision_config`` where the
        model has them).
    :return: ``None``.
    """


@hookspec
def register_commands(register: Register) -> None:
    """Add a subcommand to the ``ftcore`` CLI.

    Called once when the CLI starts, before arguments are parsed; keep the
    import of your plugin module cheap (no torch at module level).

    :param register: ``register(name, help, configure, handler)``:
        ``configure(parser)`` adds arguments to an ``argparse`` parser,
        ``handler(args)`` runs the command and returns an exit code
        (``args.plugins`` is the plugin manager).
    :return: ``None``.
    """


@hookspec
def register_dataset_formats(register: Register) -> None:
    """Provide dataset formats, selected in a recipe by ``datasets[].type``.

    Called once at start-up.

    :param register: ``register(name, function, options=None)``.
        ``function(row, dataset, ctx)`` turns one row (a dict) into either a
        list of ``(text, trained)`` segments, which the core tokenizes once
        and labels by character span, or a dict with ``input_ids`` and
        ``labels`` (``-100`` for untrained positions) for full control, plus
        any JSON-serialisable extras, which the core caches, dumps and hands
        to the collator unchanged. ``dataset`` is the validated dataset entry
        (its format options are attributes), ``ctx`` a
        ``ftcore.api.FormatContext`` (tokenizer, recipe, chat template). Raise
        ``ftcore.api.RowError(message)`` for a bad row; the core adds the file
        and row number. Any other exception is reported as the plugin's, with
        the file and row. ``options`` is a pydantic model of the format's own
        keys in the dataset entry (unknown keys are errors).

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
        same way.
    :return: ``None``.
    """


@hookspec
def register_content_parts(register: Register) -> None:
    """Handle non-text parts of a chat message's content (``{"type": "image", ...}``).

    Called once at start-up. A conversation format (``type: chat_template``,
    ``sharegpt``: ``ftcore.api.format_chat``) meets ``{"type": T, ...}`` in a
    message's content list and hands it to the handler registered for ``T``;
    text parts are the format's own. Without a handler for ``T`` the row is a
    bad row ("no installed plugin handles 'T' parts"), so a disabled plugin's
    parts are never silently dropped.

    :param register: ``register(type, handler)``. ``handler(part)`` gets a
        ``ftcore.api.ContentPart`` (the part as written, its message, and
        ``part.row``, the row's ``ftcore.api.ContentRow``) and returns the text
        that stands for the part in the message (an image token), which never
        trains; ``RowError`` for a part it cannot use. A handler with a
        ``finish`` attribute has ``finish(row)`` called once for every
        conversation row, after the row's parts were handled and before it is
        rendered, whether or not the row has parts of type ``T``: the place to
        check the row as a whole, read a column of parts beside the messages
        (``row.columns``), edit ``row.messages``, and record the example's
        extras in ``row.extras`` (JSON-serialisable; the core caches and dumps
        them and hands them to the collator). Any other exception in either is
        reported as the plugin's, with the data file and row.
    :return: ``None``.
    """


@hookspec
def register_chat_templates(register: Register) -> None:
    """Provide chat templates, selected in a recipe by ``chat_template: name``.

    Called once at start-up.

    :param register: ``register(name, template)``: ``template`` is a Jinja
        string in the Hugging Face chat-template dialect, or a callable
        ``template(tokenizer, recipe) -> str`` (``None`` from the callable
        means "no template": formats that need one then report it).
    :return: ``None``.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Provide evaluators, selected in a recipe by name under ``evaluators:``.

    Called once at start-up. Evaluators run on the validation split at each
    evaluation (``eval_steps`` / ``evals_per_epoch``, at the start with
    ``eval_on_start``, and at the end of training).

    :param register: ``register(name, function)``. ``function(ctx)`` gets a
        ``ftcore.api.EvalContext`` (model, tokenizer, recipe, dataset,
        collator, batch size, device, stash, and the ``step``, ``max_steps``
        and ``phase`` of this evaluation) and returns a dict of metric name to
        number; the core prefixes names with ``eval_`` and logs them. An
        exception raised inside ``function`` is reported as the plugin's.
    :return: ``None``.
    """


# ─── Recipe ──────────────────────────────────────────────────────────────────


@hookspec
def validate_recipe(recipe: Recipe, error: ErrorSink) -> None:
    """Check rules that span several keys, after the schema accepted the recipe.

    Called by ``ftcore validate`` and at the start of ``ftcore run``, once per
    validation, before anything is loaded; only when every key passed its
    type check. Every plugin is called; all errors are reported together.

    :param recipe: the validated ``ftcore.api.Recipe`` (read-only).
    :param error: ``error(key_path, message)`` records one problem; say what
        is allowed or how to fix it.
    :return: ``None``.
    """


# ─── Launch: several processes ───────────────────────────────────────────────


@hookspec(firstresult=True)
def launch_processes(recipe: Recipe, plan: Plan, command: list[str]) -> int | None:
    """Start the training processes of ``ftcore run`` and wait for them.

    Called once by ``ftcore run`` after validation, in the process the user
    started, unless that process was itself started by a launcher (then it
    trains at once). firstresult.

    :param recipe: the validated recipe.
    :param plan: ``ftcore.api.Plan``: ``nproc``, ``nnodes``, ``node_rank``,
        ``master_addr``, ``master_port`` from the command line.
    :param command: the ``ftcore`` arguments each process runs
        (``["run", recipe, overrides..., flags...]``).
    :return: the exit code of the launch, or ``None`` to train in this one
        process. When ``plan`` asks for several processes and every plugin
        answers ``None``, the command stops with "no plugin provides ...".
    """


@hookspec(firstresult=True)
def dry_run(recipe: Recipe, workdir: Path, train: Callable[..., Any], plugins: Any) -> int | None:
    """Rehearse a run on this machine instead of running it (``ftcore run RECIPE --dry-run``).

    Called once by ``ftcore run --dry-run`` after validation, instead of
    everything else ``ftcore run`` does: the output folder is never checked,
    locked or written, no launcher starts. firstresult. The built-in
    ``planning`` plugin answers: a tiny model of the same architecture, a
    sample of the data, a few optimizer steps on the CPU, then the plan of the
    real run.

    :param recipe: the validated recipe, as the real run would use it.
    :param workdir: a ``pathlib.Path``: an empty temporary folder for whatever
        the dry run writes; removed afterwards (kept, and printed, with
        ``--keep-dry-run``).
    :param train: ``train(overrides) -> result``: the real run's pipeline
        (every run hook, in this process) on the recipe read again with
        ``overrides`` (``key=value`` strings, as on the command line) after
        the command line's, and ``output_dir`` inside ``workdir``. ``result``
        has ``output_dir``, ``metrics``, ``model``, ``tokenizer`` and
        ``stash``. An error of the pipeline ends the command as it would end
        the real run (not as the plugin's error).
    :param plugins: the plugin manager (``ftcore.api.model_facts(plugins, ...)``).
    :return: the command's exit code, or ``None`` to let another plugin answer.
        When every plugin answers ``None``, the command stops with "no plugin
        provides a dry run".
    """


# ─── Run: set-up ─────────────────────────────────────────────────────────────


@hookspec
def run_started(recipe: Recipe, stash: Stash) -> None:
    """Set up what the whole run needs before anything loads (a process group, a tracker's environment).

    Called once per process at the start of ``ftcore run``'s training, first
    of the run hooks, after the output folder was checked. Every plugin is
    called.

    :param recipe: the validated recipe.
    :param stash: the run's stash.
    :return: ``None``.
    """


@hookspec
def trainer_arguments(recipe: Recipe, stash: Stash) -> dict | None:
    """Add or change ``transformers.TrainingArguments`` for this run.

    Called once per process, after ``run_started`` and before anything is
    loaded, so a wrong setting fails in seconds. Every plugin is called. The
    core maps its own keys first; plugins map theirs (``deepspeed``,
    ``report_to``, ...).

    :param recipe: the validated recipe.
    :param stash: the run's stash.
    :return: a dict of ``TrainingArguments`` keyword arguments to set, or
        ``None``. Two plugins setting the same argument to different values is
        an error naming both.
    """


# ─── Run: tokenizer, model, adapter ─────────────────────────────────────────


@hookspec(firstresult=True)
def load_tokenizer(recipe: Recipe, stash: Stash) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer for the recipe.

    Called once, after ``trainer_arguments`` and before the data is prepared.
    firstresult. The built-in answer uses ``AutoTokenizer`` on
    ``tokenizer_config`` or ``base_model``; a multimodal plugin returns its
    processor's tokenizer and keeps the processor in ``stash[PROCESSOR]``.

    :param recipe: the validated recipe.
    :param stash: the run's stash; record added tokens as ``stash[NEW_TOKENS]``
        (``ftcore.api.finish_tokenizer`` does).
    :return: a tokenizer with ``save_pretrained``, or ``None`` to let another
        plugin answer.
    """


@hookspec(firstresult=True)
def quantization_config(recipe: Recipe, stash: Stash) -> Any | None:
    """Choose how the base model's weights are quantized when loaded.

    Called once, after the data is prepared and before ``load_model``.
    firstresult.

    :param recipe: the validated recipe.
    :param stash: the run's stash.
    :return: a ``transformers`` quantization config (for example
        ``BitsAndBytesConfig``) passed to ``load_model``, or ``None``. When
        every plugin answers ``None`` the model loads unquantized.
    """


@hookspec(firstresult=True)
def load_model(recipe: Recipe, quantization_config: Any, stash: Stash) -> torch.nn.Module | None:
    """Load the base model.

    Called once, after ``quantization_config``. firstresult. The built-in
    answer uses ``AutoModelForCausalLM`` with the recipe's dtype and attention
    implementation.

    :param recipe: the validated recipe.
    :param quantization_config: what ``quantization_config`` returned, or
        ``None``.
    :param stash: the run's stash.
    :return: a ``torch.nn.Module`` (usually a ``PreTrainedModel``), or
        ``None`` to let another plugin answer.
    """


@hookspec
def prepare_model(recipe: Recipe, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, stash: Stash) -> None:
    """Prepare the loaded model for training, in place.

    Called once, after ``load_model`` and before ``inject_adapter``; every
    plugin is called. Typical work: freezing modules, gradient checkpointing,
    resizing embeddings to the tokenizer, k-bit preparation.

    Order: as every hook's, the last registered first within the
    ``tryfirst``, plain and ``trylast`` groups: an installed plugin's plain
    implementation runs before the built-ins' (all ``trylast``), which run
    in the reverse order of ``ftcore.plugins.BUILTINS``. ``embeddings``,
    listed last, resizes the embeddings to the tokenizer before every other
    built-in preparation (k-bit preparation among them); a test pins it. An
    installed plugin that must see the final vocabulary marks its
    implementation ``trylast`` and reads ``stash[NEW_TOKEN_IDS]``.

    :param recipe: the validated recipe.
    :param model: the model from ``load_model``; change it in place.
    :param tokenizer: what ``load_tokenizer`` returned (after added tokens).
    :param stash: the run's stash; ``stash[NEW_TOKEN_IDS]`` once the
        embeddings are resized; a model family may set
        ``stash[ADAPTER_TARGETS]`` and ``stash[ADAPTER_SCOPE]`` for adapters.
    :return: ``None``.
    """


@hookspec(firstresult=True)
def inject_adapter(recipe: Recipe, model: torch.nn.Module, stash: Stash) -> torch.nn.Module | None:
    """Wrap the prepared model with the recipe's adapter (or decide on none).

    Called once, after ``prepare_model``. firstresult: the plugin that handles
    ``recipe.adapter`` returns the model to train (a ``PeftModel`` for
    ``lora``; the model itself for full fine-tuning, ``adapter`` absent).

    :param recipe: the validated recipe.
    :param model: the prepared model.
    :param stash: the run's stash.
    :return: the model to train, or ``None`` when this plugin does not handle
        ``recipe.adapter``. If nobody answers, the run stops with "no plugin
        provides ...".
    """


# ─── Run: batches, trainer, loss ────────────────────────────────────────────


@hookspec(firstresult=True)
def build_collator(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, stash: Stash) -> Collator | None:
    """Build the function that turns a list of tokenized examples into a batch.

    Called once, after the adapter is injected. firstresult. The built-in
    collator pads ``input_ids`` with the pad token, ``labels`` with ``-100``
    and builds the attention mask; for packed data (``sample_packing``) it
    lays out ``[rows, sequence_len]`` bins with ``position_ids`` restarting at
    each example and no attention mask, so examples never attend to each
    other. Examples carry the extras their format returned.

    :param recipe: the validated recipe.
    :param tokenizer: what ``load_tokenizer`` returned.
    :param stash: the run's stash.
    :return: ``collate(examples) -> dict of tensors``, or ``None``.
    """


@hookspec
def trainer_callbacks(recipe: Recipe, register: Register, stash: Stash) -> None:
    """Attach ``transformers.TrainerCallback`` objects to the trainer.

    Called once, after the collator is built, just before ``training_loss``
    and ``build_trainer``.

    :param recipe: the validated recipe.
    :param register: ``register(callback)`` with a ``TrainerCallback``
        instance. An exception raised in one of its methods during training
        is reported as the plugin's.
    :param stash: the run's stash.
    :return: ``None``.
    """


@hookspec(firstresult=True)
def training_loss(recipe: Recipe, model: torch.nn.Module, stash: Stash) -> LossFunction | None:
    """Replace the model's own training loss.

    Called once, after ``trainer_callbacks`` and before ``build_trainer``.
    firstresult. A custom loss (chunked cross-entropy, a distillation term,
    label smoothing) answers here; evaluation still uses the evaluators.

    :param recipe: the validated recipe.
    :param model: the model to train (after ``inject_adapter``).
    :param stash: the run's stash.
    :return: ``loss(model, inputs, num_items_in_batch) -> (loss, outputs)``:
        it runs the forward itself on the batch ``inputs`` (a dict with
        ``labels``) and returns the scalar loss to minimise and the model's
        outputs (or ``None``); ``num_items_in_batch`` is the number of trained
        tokens in the whole accumulated batch (or ``None``) to normalise by.
        ``None`` keeps the model's own loss.
    """


@hookspec(firstresult=True)
def build_trainer(recipe: Recipe, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                  arguments: TrainingArguments, train_dataset: list, eval_dataset: list | None,
                  collator: Collator, callbacks: list[TrainerCallback], evaluators: dict[str, Evaluator],
                  loss: LossFunction | None, stash: Stash) -> Trainer | None:
    """Build the trainer that trains the model.

    Called once, after ``training_loss``, before the run folder is written.
    firstresult. The built-in answer is ``ftcore.api.FtcoreTrainer``, a
    ``transformers.Trainer`` whose evaluation runs the recipe's evaluators
    and whose loss is ``loss`` when given; a preference-tuning or
    distillation plugin subclasses it (or builds another ``Trainer``).

    :param recipe: the validated recipe.
    :param model: the model to train.
    :param tokenizer: what ``load_tokenizer`` returned.
    :param arguments: the ``TrainingArguments`` (core keys plus every plugin's
        ``trainer_arguments``).
    :param train_dataset: the training examples (dicts with ``input_ids``,
        ``labels`` and extras; packed bins under ``sample_packing``).
    :param eval_dataset: the validation examples, or ``None``.
    :param collator: what ``build_collator`` returned.
    :param callbacks: the run's callbacks, the core's metrics writer first.
    :param evaluators: ``{name: function}`` of the recipe's ``evaluators``
        (empty without a validation split); run them with
        ``ftcore.api.run_evaluators``.
    :param loss: what ``training_loss`` returned, or ``None``.
    :param stash: the run's stash.
    :return: an object with ``transformers.Trainer``'s ``train``,
        ``evaluate``, ``save_model``, ``is_world_process_zero``, ``state`` and
        ``model``, or ``None`` to let another plugin answer.
    """


# ─── Run: the end ───────────────────────────────────────────────────────────


@hookspec
def save_artifacts(recipe: Recipe, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   output_dir: Path, stash: Stash) -> list[str] | None:
    """Write extra files into the run folder after the model is saved.

    Called once at the end of training on the main process, after the core
    wrote the adapter or model, the tokenizer and ``recipe.yaml``, and before
    ``run.json`` is completed. Every plugin is called.

    :param recipe: the validated recipe.
    :param model: the trained model (a ``PeftModel`` under an adapter).
    :param tokenizer: what ``load_tokenizer`` returned.
    :param output_dir: a ``pathlib.Path``; write only inside it.
    :param stash: the run's stash.
    :return: a list of file names written (recorded in ``run.json``), or
        ``None``.
    """


@hookspec
def run_finished(recipe: Recipe, stash: Stash, status: str, error: BaseException | None) -> None:
    """Tear down what ``run_started`` set up.

    Called once per process at the very end of ``ftcore run``'s training,
    last of the run hooks, whether the run completed, failed or was
    interrupted. Every plugin is called; one raising does not stop the others
    from being called, and the first such error is reported after them.

    :param recipe: the validated recipe.
    :param stash: the run's stash.
    :param status: ``"completed"``, ``"failed"`` or ``"interrupted"``.
    :param error: the exception that ended the run, or ``None``. A plugin may
        raise an ``ftcore.api.FtcoreError`` that explains it better (a dead
        rank, say); it replaces the original.
    :return: ``None``.
    """


# ─── After a run: loading what it trained ────────────────────────────────────


@hookspec(firstresult=True)
def load_trained_weights(recipe: Recipe, model: torch.nn.Module, run_dir: Path, stash: Stash) -> torch.nn.Module | None:
    """Put a finished run's trained weights on its freshly loaded base model.

    Called by ``ftcore.api.load_trained`` (``ftcore eval``, ``generate``,
    ``chat``), after ``load_tokenizer`` (the run folder's tokenizer),
    ``quantization_config`` and ``load_model`` loaded the base as the run did
    (embeddings already resized to the run's tokenizer), never during
    training; not called for the base model alone (``--baseline``).
    firstresult: the plugin that handles ``recipe.adapter`` answers.

    :param recipe: the run's validated ``recipe.yaml`` (with the command's overrides).
    :param model: the base model, loaded and resized, not prepared for training.
    :param run_dir: a ``pathlib.Path``: the run folder (``output_dir``) the run completed in.
    :param stash: the loading's own stash (``stash[PROCESSOR]`` for a vision run).
    :return: the model with the trained weights (a ``PeftModel`` for an
        adapter, the fine-tuned model for full fine-tuning), or ``None`` when
        this plugin does not handle ``recipe.adapter``. Raise
        ``ftcore.api.FtcoreError`` when the run folder lacks the weights.
    """
