"""The embeddings follow the tokenizer: tokens the recipe added get embedding rows before anything else.

``special_tokens`` and ``tokens`` may add tokens the vocabulary lacked
(``stash[NEW_TOKENS]``, recorded by ``ftcore.api.finish_tokenizer``). This
plugin's ``prepare_model`` resizes the input (and tied output) embeddings to
the tokenizer and records the new tokens' ids as ``stash[NEW_TOKEN_IDS]``,
which an adapter reads to train those rows (the lora plugin does).

It is the first built-in, so among the built-ins' ``trylast`` preparations it
runs first: k-bit preparation, freezing and adapters all see the final
vocabulary (docs/hooks.md, ``prepare_model``; pinned by a test).
"""

from ftcore.api import NEW_TOKEN_IDS, NEW_TOKENS, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


@hookimpl(trylast=True)
def prepare_model(model, tokenizer, stash):
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        log.warning(f"notice: resizing token embeddings {embeddings.num_embeddings} -> {len(tokenizer)} "
              f"for the added tokens")
        model.resize_token_embeddings(len(tokenizer))
    new_tokens = stash.get(NEW_TOKENS)
    if new_tokens:  # for adapters: these rows are untrained
        stash[NEW_TOKEN_IDS] = tokenizer.convert_tokens_to_ids(new_tokens)
