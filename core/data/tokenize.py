"""Segments -> ``input_ids`` and ``labels``: where untrained tokens get -100.

A format returns ``[(text, trained), ...]``. The joined text is tokenized once
(so tokens are exactly what the model sees at inference), and a token is
trained when its characters overlap a trained segment. The BOS token is never
trained, whether the tokenizer adds it or the text (a chat template) starts
with it; in that case the tokenizer is told not to add another: never two BOS.
"""

from __future__ import annotations

from bisect import bisect_right

from ftcore.data import IGNORE_INDEX, RowError


class BadExample(TypeError):
    """What a format returned is not an example (wrong shape, extras that are not JSON): the plugin's bug."""


def trained_spans(segments):
    """Character spans ``[(start, end)]`` of the trained segments, merged."""
    spans, pos = [], 0
    for text, trained in segments:
        end = pos + len(text)
        if trained and end > pos:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((pos, end))
        pos = end
    return spans


def tokenize_segments(segments, tokenizer) -> dict:
    """Tokenize ``[(text, trained)]`` into ``{"input_ids", "labels"}``."""
    for item in segments:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise BadExample(f"a format must return (text, trained) pairs, got {item!r}"[:300])
    text = "".join(t for t, _ in segments)
    if not text:
        raise RowError("the example is empty", "empty example")
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = enc["input_ids"]
    spans = trained_spans(segments)
    starts = [s for s, _ in spans]
    labels = []
    for token, (start, end) in zip(ids, enc["offset_mapping"], strict=True):
        trained = False
        if end > start:
            i = bisect_right(starts, end - 1) - 1  # last span starting before the token ends
            trained = i >= 0 and spans[i][1] > start
        labels.append(token if trained else IGNORE_INDEX)
    if not add_special and ids and ids[0] == tokenizer.bos_token_id:
        labels[0] = IGNORE_INDEX  # the template's BOS, like the tokenizer's, is never trained
    return {"input_ids": list(ids), "labels": labels}
