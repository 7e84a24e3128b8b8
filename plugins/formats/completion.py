"""``type: completion``: raw text, every token trained, EOS appended."""

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.plugins.formats import text_field

FTCORE_CONTRACT = "1"


class CompletionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = "text"


def completion(row, dataset, ctx):
    text = text_field(row, dataset.options.field)
    if not text.strip():
        from ftcore.data import RowError

        raise RowError(f"field '{dataset.options.field}' is empty", "empty text")
    return [(text, True), (ctx.eos_token, True)]


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("completion", completion, CompletionOptions)
