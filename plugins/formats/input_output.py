"""``type: input_output``: template-free text in segments, each saying whether it trains.

    {"segments": [{"text": "<|begin_of_text|>Q: 2+3?\\n", "label": false},
                  {"text": "A: 5<|eot_id|>", "label": true}]}

Exact control: every token of a ``label: true`` segment trains, no token of a
``label: false`` segment does. To make that exact, each segment is tokenized
on its own, so a segment boundary is always a token boundary (put boundaries
where the text splits anyway: before a space, a newline or a special token).
Nothing is added but what the tokenizer itself adds at the start (Llama 3's
``<|begin_of_text|>``; Qwen's tokenizers add nothing), and that not when the
first segment already begins with the BOS token: never two BOS, and the BOS is
never trained. No EOS is added: write it into the text where you want it.
``train_on_inputs`` has no effect here: the labels are the data's.
"""

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.api import IGNORE_INDEX, RowError

FTCORE_CONTRACT = "1"


class InputOutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field_segments: str = "segments"


def segments_of(row, options):
    """The row's ``[(text, trained)]``; RowError if malformed."""
    name = options.field_segments
    raw = row.get(name)
    if raw is None:
        raise RowError(f"missing field '{name}' (row has: {', '.join(sorted(row)) or 'nothing'})", "missing field")
    if not isinstance(raw, list):
        raise RowError(f"field '{name}' must be a list of segments, got {type(raw).__name__}", "wrong type")
    if not raw:
        raise RowError(f"field '{name}' is empty", "empty example")
    segments = []
    for i, segment in enumerate(raw):
        where = f"segment {i}"
        if not isinstance(segment, dict):
            raise RowError(f"{where} must be an object with text and label, got {type(segment).__name__}",
                           "wrong type")
        for key in ("text", "label"):
            if key not in segment:
                raise RowError(f"{where}: missing field '{key}'", "missing field")
        if not isinstance(segment["text"], str):
            raise RowError(f"{where}: field 'text' must be a string, got {type(segment['text']).__name__}",
                           "wrong type")
        if not isinstance(segment["label"], bool):
            raise RowError(f"{where}: field 'label' must be true or false, got {segment['label']!r}", "wrong type")
        segments.append((segment["text"], segment["label"]))
    return segments


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of what it encodes (Llama 3: yes, Qwen: no)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def input_output(row, dataset, ctx):
    tokenizer = ctx.tokenizer
    segments = [(text, trained) for text, trained in segments_of(row, dataset.options) if text]
    if not segments:
        raise RowError("every segment is empty", "empty example")
    input_ids, labels = [], []
    if adds_bos(tokenizer) and not segments[0][0].startswith(tokenizer.bos_token):
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for text, trained in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    if input_ids[0] == tokenizer.bos_token_id:
        labels[0] = IGNORE_INDEX  # the BOS is never trained, whoever wrote it
    return {"input_ids": input_ids, "labels": labels}


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("input_output", input_output, InputOutputOptions)
