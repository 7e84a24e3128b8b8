"""``type: pretrain``: raw text documents, concatenated and cut into ``sequence_len`` chunks.

Each row is one document (``field``, default ``text``), tokenized as
``completion`` does it: the tokenizer's own rules (Llama 3 puts
``<|begin_of_text|>`` first, Qwen's tokenizers nothing), then the text, then
the EOS token. The documents of one dataset entry are joined in row order,
so an EOS always separates two documents, and the token stream is cut into
chunks of exactly ``sequence_len`` tokens. The last chunk keeps what is left
(shorter, never padded with other text, never dropped): no document is lost,
and a dataset shorter than one chunk still trains. Every token trains except
BOS tokens (never trained anywhere in ftcore). Documents of different
dataset entries never share a chunk.

The chunking is ``chunk_documents``, this format's ``combine`` step (see the
``register_dataset_formats`` hook): the core calls it once per dataset entry
with every formatted document.
"""

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.plugins.formats.completion import completion

FTCORE_CONTRACT = "1"


class PretrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = "text"


def pretrain(row, dataset, ctx):
    """One document: its text and the EOS token, every token trained (as ``type: completion``)."""
    return completion(row, dataset, ctx)


def chunk_documents(items, dataset, ctx):
    """``[(origin, document)]`` -> ``[(origin, chunk)]``: the documents joined in order and cut every
    ``sequence_len`` tokens; a chunk is named after the row it starts in; the last one may be shorter."""
    size = ctx.recipe.sequence_len
    input_ids, labels, starts = [], [], []  # starts: (token offset, origin) of each document
    for origin, document in items:
        starts.append((len(input_ids), origin))
        input_ids.extend(document["input_ids"])
        labels.extend(document["labels"])
    chunks, doc = [], 0
    for begin in range(0, len(input_ids), size):
        while doc + 1 < len(starts) and starts[doc + 1][0] <= begin:
            doc += 1
        chunks.append((starts[doc][1], {"input_ids": input_ids[begin:begin + size],
                                        "labels": labels[begin:begin + size]}))
    return chunks


pretrain.combine = chunk_documents


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("pretrain", pretrain, PretrainOptions)
