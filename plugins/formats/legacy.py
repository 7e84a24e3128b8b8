"""Axolotl's older instruction prompt styles: ``type: alpaca:chat``, ``alpaca:phi``, ``jeopardy``, ...

Each is a fixed text layout of an instruction, an optional input and a reply,
written from Axolotl's documented layouts (its ``prompters``): a system line
(the Alpaca preamble unless the style has its own), the user turn, then the
reply. As in Axolotl, the recipe's ``chat_template`` plays no part. The prompt
is masked unless ``train_on_inputs``; the reply and the EOS token train.

The ``instruct`` style is the Alpaca prompt (``### Instruction:`` ...); the
other styles of a base type are named ``BASE:STYLE``:

- ``chat``: ``SYSTEM: ...\\nUSER: {instruction}\\n{input}\\nASSISTANT:{reply}``
- ``chatml``: ``<|im_start|>`` turns, the reply after ``<|im_start|>assistant\\n``
- ``phi``: ``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` blocks closed by ``<|end|>``

Base types and their fields (each field name is an option, ``field_instruction`` ...):
``alpaca`` (instruction, input, output), ``jeopardy`` (question, category, and
"what is " + answer), ``oasst`` (INSTRUCTION, RESPONSE), ``gpteacher``
(instruction, input, response), ``explainchoice`` / ``concisechoice`` (question,
choices listed as ``- "choice"`` lines, solution or else explanation),
``summarizetldr`` (article, summary), ``alpaca_chat`` (alpaca in the chat style),
``alpaca_chat.load_qa`` (question, answer), ``alpaca_chat.load_camel_ai``
(message_1, message_2).
"""

from pydantic import BaseModel, ConfigDict, create_model

from ftcore import hookimpl
from ftcore.api import RowError, text_field

FTCORE_CONTRACT = "1"

WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.")
NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
EXPLAIN = "Choose the answer that best answers the question. Explain your reasoning.\n"
CONCISE = "Choose the answer that best answers the question. Be concise in your response.\n\n"

# style -> (system layout, turn with input, turn without input)
STYLES = {
    "instruct": ("{system}\n\n", "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                 "### Instruction:\n{instruction}\n\n### Response:\n"),
    "chat": ("SYSTEM: {system}\n", "USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:"),
    "chatml": ("<|im_start|>system\n{system}<|im_end|>\n",
               "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"),
    "phi": ("<|system|>\n{system}<|end|>\n", "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
            "<|user|>\n{instruction}<|end|>\n<|assistant|>\n"),
}


class LegacyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field_instruction: str = "instruction"
    field_input: str | None = "input"
    field_output: str = "output"


def _layout(style, instruction, extra, system_with, system_without, turns=None, system_format=None):
    default_format, with_input, without_input = STYLES[style]
    system_format = system_format or default_format
    if turns is not None:  # a base type with its own turn layout, whatever the style
        with_input, without_input = turns
    system = system_with if extra else system_without
    head = system_format.format(system=system) if system else ""
    turn = with_input if extra else without_input
    return head + turn.replace("{instruction}", instruction).replace("{input}", extra)


def make_format(style, system_with=WITH_INPUT, system_without=NO_INPUT, turns=None, prefix="", choices=False,
                fallback=None, system_format=None):
    """A format function for one base type in one style."""

    def legacy(row, dataset, ctx):
        o = dataset.options
        instruction = text_field(row, o.field_instruction)
        if choices:
            items = row.get(o.field_input)
            if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
                raise RowError(f"field '{o.field_input}' must be a list of strings (the choices)", "wrong type")
            extra = "\n".join(f'- "{c}"' for c in items)
        else:
            extra = text_field(row, o.field_input, required=False) if o.field_input else ""
        output = text_field(row, o.field_output, required=fallback is None)
        if not output and fallback:
            output = text_field(row, fallback)
        prompt = _layout(style, instruction, extra, system_with, system_without, turns, system_format)
        return [(prompt, ctx.recipe.train_on_inputs), (prefix + output, True), (ctx.eos_token, True)]

    return legacy


def _options(**defaults):
    """``LegacyOptions`` with other field names as defaults."""
    return create_model("LegacyOptions_" + "_".join(str(v) for v in defaults.values()), __base__=LegacyOptions,
                        **{key: (str | None, value) for key, value in defaults.items()})


BASES = {  # base type -> (options model, format kwargs)
    "alpaca": (LegacyOptions, {}),
    "jeopardy": (_options(field_instruction="question", field_input="category", field_output="answer"),
                 {"prefix": "what is "}),
    "oasst": (_options(field_instruction="INSTRUCTION", field_input=None, field_output="RESPONSE"), {}),
    "gpteacher": (_options(field_output="response"), {}),
    "explainchoice": (_options(field_instruction="question", field_input="choices", field_output="solution"),
                      {"system_with": EXPLAIN, "system_without": EXPLAIN, "choices": True,
                       "fallback": "explanation"}),
}


@hookimpl(trylast=True)
def register_dataset_formats(register):
    for base, (options, kwargs) in BASES.items():
        for style in STYLES:
            register(f"{base}:{style}", make_format(style, **kwargs), options)
        if base != "alpaca":  # plain "alpaca" is the alpaca plugin's (with its chat_template support)
            register(base, make_format("instruct", **kwargs), options)
    concise = _options(field_instruction="question", field_input="choices", field_output="solution")
    chat_turns = (STYLES["chat"][1], STYLES["chat"][2])
    register("concisechoice", make_format("chat", CONCISE, CONCISE, chat_turns, choices=True,  # system as is
                                          fallback="explanation", system_format="{system}"), concise)
    register("summarizetldr", make_format("chat", "", "", (
        "USER: Summarize the following article as a TL;DR.\n{instruction}\n{input}\nASSISTANT:",
        "USER: Summarize the following article as a TL;DR.\n{instruction}\nASSISTANT:")),
        _options(field_instruction="article", field_input=None, field_output="summary"))
    register("alpaca_chat", make_format("chat"), LegacyOptions)
    register("alpaca_chat.load_qa", make_format("chat"),
             _options(field_instruction="question", field_input=None, field_output="answer"))
    register("alpaca_chat.load_camel_ai", make_format("chat"),
             _options(field_instruction="message_1", field_input=None, field_output="message_2"))
