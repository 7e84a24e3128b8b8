"""``type: completion``: raw text, every token trained, EOS appended."""

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.api import document_segments

FTCORE_CONTRACT = "1"


class CompletionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = "text"


def completion(row, dataset, ctx):
    return document_segments(row, dataset.options.field, ctx)  # ftcore.api: the text and EOS, all trained


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("completion", completion, CompletionOptions)
