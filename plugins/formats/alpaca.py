"""``type: alpaca``: instruction, optional input, output.

Without a recipe ``chat_template`` the row is laid out in the Alpaca prompt;
the prompt is masked out of the loss unless ``train_on_inputs``, the output
and the EOS token are trained. With ``chat_template`` set, the row becomes a
conversation (system if any, user: instruction and input, assistant: output)
rendered by that template, so training matches how the saved tokenizer's
template will prompt the model; the reply and its end-of-turn token train.
"""

from pydantic import BaseModel, ConfigDict

from ftcore import hookimpl
from ftcore.api import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, conversation_segments, text_field

FTCORE_CONTRACT = "1"


class AlpacaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field_instruction: str = "instruction"
    field_input: str = "input"
    field_output: str = "output"
    field_system: str = "system"
    system_prompt: str | None = None


def alpaca(row, dataset, ctx):
    o = dataset.options
    instruction = text_field(row, o.field_instruction)
    extra = text_field(row, o.field_input, required=False)
    output = text_field(row, o.field_output)
    system = text_field(row, o.field_system, required=False) or o.system_prompt
    if ctx.recipe.chat_template:
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = ([{"role": "system", "content": system, "train": None}] if system else []) + [
            {"role": "user", "content": user, "train": None}, {"role": "assistant", "content": output, "train": None}]
        return conversation_segments(messages, ctx)  # ftcore.api: the reply and its end-of-turn token train
    preamble = system + "\n\n" if system else (ALPACA_PREAMBLE_WITH_INPUT if extra else ALPACA_PREAMBLE)
    prompt = f"{preamble}### Instruction:\n{instruction}\n\n"
    if extra:
        prompt += f"### Input:\n{extra}\n\n"
    prompt += "### Response:\n"
    train_prompt = ctx.recipe.train_on_inputs
    return [(prompt, train_prompt), (output, True), (ctx.eos_token, True)]


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("alpaca", alpaca, AlpacaOptions)
