"""``ftcore generate`` and ``ftcore chat`` (the built-in ``inference`` plugin).

One tiny LoRA run per module, trained for a few seconds to answer every message
with the same two colour words, so replies are short and end at the template's
end of turn. Replies are checked against an independent greedy generation with
plain transformers + peft and the run's saved chat template; ``chat`` is driven
through a pseudo-terminal as a person would.
"""

import json
import os
import random
import sys

import pexpect
import pytest
import torch
from ftcore.cli import main
from ftcore.testing import COLORS, run_recipe, write_jsonl

MAX_NEW = 10
TIMEOUT = 90  # seconds for one expect: loading torch and the model on a busy 2-core machine


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    r = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": " ".join(r.sample(COLORS, 2))},
                          {"role": "assistant", "content": "green blue"}]} for _ in range(64)]
    data = write_jsonl(tmp / "chat.jsonl", rows)
    keys = dict(base_model=str(tiny_llama), datasets=[{"path": str(data), "type": "chat_template"}],
                chat_template="llama3", adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True,
                sequence_len=64, micro_batch_size=8, max_steps=30, learning_rate=1e-2, lr_scheduler="constant",
                val_set_size=0, logging_steps=10)
    return run_recipe(keys, output_dir=tmp / "run").output_dir


@pytest.fixture(scope="module")
def plain(run, tiny_llama):
    """The run loaded with plain transformers + peft (no ftcore), and its base alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), run)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    return {"tokenizer": tokenizer, "tuned": tuned.eval(), "base": base.eval()}


def greedy(plain, messages, model="tuned", max_new_tokens=MAX_NEW):
    """(reply, new tokens before the end of turn, finish reason) by plain transformers, greedy."""
    tokenizer = plain["tokenizer"]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    with torch.no_grad():
        out = plain[model].generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                    pad_token_id=tokenizer.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    ended = [i for i, t in enumerate(new) if t in stops]
    ids = new[:ended[0]] if ended else new
    return tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), "stop" if ended else "length"


def user(text):
    return [{"role": "user", "content": text}]


def ftcore(capsys, *args):
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ── ftcore generate ──────────────────────────────────────────────────────────


def test_generate_prompt_equals_plain_peft_greedy(run, plain, capsys):
    code, out, err = ftcore(capsys, "generate", run, "--prompt", "red blue", "--prompt", "white black orange",
                            "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    expected = [greedy(plain, user("red blue"))[0], greedy(plain, user("white black orange"))[0]]
    assert expected[0] == "green blue"  # the run learned its one reply, ending at <|eot_id|>
    assert out == "\n\n".join(expected) + "\n"  # the replies alone on stdout; messages go to stderr

    # --base: the base model alone, with the run's template; differs from what the run learned
    code, out, err = ftcore(capsys, "generate", run, "--base", "--prompt", "red blue", "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert out == greedy(plain, user("red blue"), model="base")[0] + "\n"
    assert out != "green blue\n"

    # --system goes first in the conversation
    code, out, err = ftcore(capsys, "generate", run, "--system", "Be brief.", "--prompt", "red",
                            "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert out == greedy(plain, [{"role": "system", "content": "Be brief."}, *user("red")])[0] + "\n"


def test_generate_raw_is_plain_completion(run, plain, capsys):
    code, out, err = ftcore(capsys, "generate", run, "--raw", "--prompt", "red green", "--max-new-tokens", 6)
    assert code == 0, err
    tokenizer = plain["tokenizer"]
    inputs = tokenizer("red green", return_tensors="pt")  # no template: bos + the text
    with torch.no_grad():
        ids = plain["tuned"].generate(**inputs, max_new_tokens=6, do_sample=False,
                                      eos_token_id=[tokenizer.eos_token_id,
                                                    tokenizer.convert_tokens_to_ids("<|eot_id|>")],
                                      pad_token_id=tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:].tolist()
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")}
    ids = ids[:next((i for i, t in enumerate(ids) if t in stops), len(ids))]
    assert out == tokenizer.decode(ids, skip_special_tokens=True).strip() + "\n"


def test_generate_file_writes_json_lines(run, plain, tmp_path, capsys):
    conversation = [*user("red blue"), {"role": "assistant", "content": "green blue"}, *user("black")]
    rows = [{"id": 1, "prompt": "red blue"},
            {"id": 2, "messages": conversation},
            {"id": 3, "prompt": "white", "system": "Answer in colours."},
            {"id": 4, "prompt": "orange purple yellow"},
            {"id": 5, "prompt": "red blue", "max_new_tokens": 1}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out_file = tmp_path / "replies.jsonl"
    code, out, err = ftcore(capsys, "generate", run, "--file", prompts, "--out", out_file, "--batch-size", 3,
                            "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert out == ""  # everything went to --out
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5]
    expected = [greedy(plain, user("red blue")), greedy(plain, conversation),
                greedy(plain, [{"role": "system", "content": "Answer in colours."}, *user("white")]),
                greedy(plain, user("orange purple yellow")), greedy(plain, user("red blue"), max_new_tokens=1)]
    for record, row, (reply, tokens, finish) in zip(records, rows, expected):
        assert (record["reply"], record["tokens"], record["finish_reason"]) == (reply, tokens, finish)
        assert record["model"] == "fine-tuned"
        assert {k: record[k] for k in row} == row  # the row's own fields come back as given
    assert records[4]["tokens"] == 1 and records[4]["finish_reason"] == "length"
    assert records[0]["finish_reason"] == "stop"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".replies")]  # no temporary file left

    # without --out the same lines go to stdout
    code, out, err = ftcore(capsys, "generate", run, "--file", prompts, "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == records


def test_generate_bad_input_is_a_clear_error(run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "red"}\n{"prompt": "x", "temperature": -1}\n')
    code, out, err = ftcore(capsys, "generate", run, "--file", bad)
    assert code == 2 and f"{bad}: line 2" in err and "temperature" in err and ">= 0" in err
    bad.write_text('{"prompt": "red"}\n\n{"text": "x"}\n')
    code, out, err = ftcore(capsys, "generate", run, "--file", bad)
    assert code == 2 and f"{bad}: line 3" in err and '"prompt"' in err and '"messages"' in err

    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    for command in ("generate", "chat"):
        extra = ["--prompt", "hi"] if command == "generate" else []
        code, out, err = ftcore(capsys, command, folder, *extra)
        assert code == 2
        assert "neither an ftcore run folder" in err and "model folder" in err and "Traceback" not in err
    code, out, err = ftcore(capsys, "generate", tmp_path / "missing", "--prompt", "hi")
    assert code == 2 and "no such folder" in err


def test_generate_on_a_merged_model_folder(run, plain, tiny_llama, tmp_path, capsys):
    """A plain transformers folder (what ``ftcore merge`` writes) loads without a recipe."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    PeftModel.from_pretrained(base, run).merge_and_unload().save_pretrained(merged)
    plain["tokenizer"].save_pretrained(merged)
    code, out, err = ftcore(capsys, "generate", merged, "--prompt", "red blue", "--max-new-tokens", MAX_NEW)
    assert code == 0, err
    assert out == greedy(plain, user("red blue"))[0] + "\n"
    code, out, err = ftcore(capsys, "generate", merged, "--base", "--prompt", "red blue")
    assert code == 2 and "--base needs a run folder" in err


def test_replies_stream_piece_by_piece(plain):
    from ftcore.plugins.inference import (
        Loaded,
        Settings,
        generate,
        render,
        text_streamer,
    )

    tokenizer = plain["tokenizer"]
    loaded = Loaded(plain["tuned"], tokenizer, "tiny", "fine-tuned", 64)
    pieces = []
    reply = generate(loaded, [render(tokenizer, user("red blue"))], Settings(max_new_tokens=MAX_NEW),
                     streamer=text_streamer(tokenizer, pieces.append))[0]
    assert len(pieces) >= 2  # shown as it is generated, not at the end
    assert "".join(pieces).strip() == reply.text == greedy(plain, user("red blue"))[0]
    assert "<|eot_id|>" not in "".join(pieces)


# ── ftcore chat, through a pseudo-terminal ───────────────────────────────────


def spawn_chat(run, *args):
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    child = pexpect.spawn(sys.executable, ["-m", "ftcore", "chat", str(run), "--max-new-tokens", str(MAX_NEW),
                                           *args], env=env, encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(40, 200))
    return child


def finished(child) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in child.before
    return child.exitstatus


def test_chat_streams_keeps_the_conversation_and_resets(run, plain):
    child = spawn_chat(run, "-v")  # --verbose shows the prompt each turn renders
    child.expect(r"ftcore chat · .*\+ lora adapter .*· cpu float32 · .*Ctrl-D")
    child.expect_exact("you> ")

    first = greedy(plain, user("red blue"))[0]
    child.sendline("red blue")
    child.expect_exact("prompt (")
    child.expect_exact("model> ")
    child.expect_exact(first)
    child.expect_exact("you> ")

    history = [*user("red blue"), {"role": "assistant", "content": first}, *user("black white")]
    child.sendline("black white")
    child.expect_exact("model> ")
    turn2 = child.before  # the prompt rendered for turn 2 holds turn 1, rendered by the run's template
    assert plain["tokenizer"].apply_chat_template(history, add_generation_prompt=True, tokenize=False) in \
        turn2.replace("\r\n", "\n")
    child.expect_exact(greedy(plain, history)[0])
    child.expect_exact("you> ")

    child.sendline("/system Be brief.")
    child.expect_exact("system message set")
    child.expect_exact("you> ")
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    child.expect_exact("you> ")
    child.sendline("/nonsense")
    child.expect_exact("unknown command /nonsense")
    child.expect_exact("you> ")
    child.sendline("yellow")
    child.expect_exact("model> ")
    after_reset = child.before.replace("\r\n", "\n")
    assert "Be brief." in after_reset and "red blue" not in after_reset.split("prompt (")[-1]
    child.expect_exact(greedy(plain, [{"role": "system", "content": "Be brief."}, *user("yellow")])[0])
    child.expect_exact("you> ")
    child.sendline("/exit")
    assert finished(child) == 0


def test_chat_trims_the_oldest_turns_and_ctrl_d_exits(run):
    child = spawn_chat(run, "--context", "48")  # 38 tokens of prompt: one exchange and a new message do not fit
    child.expect_exact("you> ")
    notices = []
    for words in ("red blue", "black white", "orange purple"):
        child.sendline(words)
        child.expect_exact("model> ")
        notices.append("dropped the oldest 1 exchange" in child.before)
        child.expect_exact("you> ")
    assert notices == [False, True, True]
    child.sendeof()
    assert finished(child) == 0


def test_chat_ctrl_c_at_the_prompt_exits_cleanly(run):
    child = spawn_chat(run)
    child.expect_exact("you> ")
    child.sendintr()
    assert finished(child) == 0
