"""``type: pretrain``: raw text documents, concatenated and cut into ``sequence_len`` chunks.

Each row is one document (``field``, default ``text``), tokenized as
``completion`` does it (both use ``ftcore.api.document_segments``): the tokenizer's own rules (Llama 3 puts
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
from ftcore.api import chunk_documents, document_segments

FTCORE_CONTRACT = "1"


class PretrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = "text"


def pretrain(row, dataset, ctx):
    """One document: its text and the EOS token, every token trained (as ``type: completion``)."""
    return document_segments(row, dataset.options.field, ctx)  # ftcore.api, as type: completion uses it


pretrain.combine = chunk_documents  # ftcore.api: documents joined, cut every sequence_len tokens


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("pretrain", pretrain, PretrainOptions)
