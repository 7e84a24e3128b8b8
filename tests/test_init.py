"""``ftcore init``: a starter recipe, the largest model and method whose estimate fits, the data's format.

The choosing is tested with a stand-in estimate (a fixed number of bytes per parameter for each method),
so the assertions say what the selection does whatever the real arithmetic gives; the end-to-end tests at
the bottom use memory.py and the registered facts as ``ftcore init`` does.
"""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import alpaca_rows, chat_rows, write_jsonl

from ftcore.api import FtcoreError, ModelFacts
from ftcore.cli import main
from ftcore.plugins.planning import init

GiB = 1024 ** 3
LICENSE = "Llama 3.1 Community License"


def _facts(model_id, family, task, size, billions, model_type, gated=True, license=LICENSE):
    return ModelFacts(model_id, family, task, size, int(billions * 1e9), license, "https://example.org/license",
                      gated, {"model_type": model_type, "billions": billions}, "", "models")


MODELS = {f.model_id: f for f in [
    _facts("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1", "chat", "8B", 8.0, "llama"),
    _facts("meta-llama/Llama-3.1-8B", "Llama 3.1", "chat", "8B", 8.0, "llama"),
    _facts("meta-llama/Llama-3.1-70B-Instruct", "Llama 3.1", "chat", "70B", 70.0, "llama"),
    _facts("meta-llama/Llama-3.1-405B-Instruct", "Llama 3.1", "chat", "405B", 405.0, "llama"),
    _facts("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2", "chat", "3B", 3.0, "llama"),
    _facts("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2", "chat", "1B", 1.0, "llama"),
    _facts("Qwen/Qwen2.5-Coder-14B-Instruct", "Qwen2.5 Coder", "code", "14B", 14.0, "qwen2", False, "Apache 2.0"),
    _facts("Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen2.5 Coder", "code", "7B", 7.0, "qwen2", False, "Apache 2.0"),
    _facts("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5 Coder", "code", "0.5B", 0.5, "qwen2", False, "Apache 2.0"),
    _facts("meta-llama/Llama-3.2-90B-Vision-Instruct", "Llama 3.2 Vision", "vision", "90B Vision", 90.0, "mllama"),
    _facts("meta-llama/Llama-3.2-11B-Vision-Instruct", "Llama 3.2 Vision", "vision", "11B Vision", 11.0, "mllama"),
]}


# ── a stand-in for memory.py: bytes per parameter by method, ZeRO-3 divides by the GPUs ──


@dataclass
class StubSettings:
    method: str = "full"
    load_in_4bit: bool = False
    micro_batch_size: int = 1
    sequence_len: int = 4096
    optimizer: str = "adamw_torch"
    zero_stage: int = 0
    chunked_loss: bool = False


@dataclass
class StubEstimate:
    total_bytes: int
    gpu_memory_bytes: int
    breakdown: dict = field(default_factory=dict)

    @property
    def fits(self):
        return self.total_bytes <= self.gpu_memory_bytes

    @property
    def headroom_bytes(self):
        return self.gpu_memory_bytes - self.total_bytes

    def to_json(self):
        return {"total_bytes": self.total_bytes, "fits": self.fits, "breakdown": self.breakdown}


PER_PARAMETER = {"full": 8.0, "lora": 2.2, "qlora": 0.8}  # bytes
CALLS = []


def stub_estimate(config, settings, *, gpu_memory_bytes=None, gpus=1):
    CALLS.append((config["billions"], settings, gpus))
    total = config["billions"] * 1e9 * PER_PARAMETER[settings.method] + 2 * GiB
    if settings.zero_stage == 3:
        total /= gpus
    elif settings.zero_stage == 2 and settings.method == "full":
        total *= 0.6
    return StubEstimate(int(total), gpu_memory_bytes, {"weights": int(total) - 2 * GiB, "overhead": 2 * GiB})


def stub_settings(keys):
    return StubSettings(method=keys.get("adapter") or "full", load_in_4bit=bool(keys.get("load_in_4bit")),
                        micro_batch_size=keys["micro_batch_size"], sequence_len=keys["sequence_len"],
                        optimizer=keys["optimizer"], zero_stage={"zero2": 2, "zero3": 3}.get(keys.get("deepspeed"), 0),
                        chunked_loss=bool(keys.get("chunked_cross_entropy")))


def pick(task, gib, gpus=1, **kw):
    return init.choose(init.candidates(MODELS, task, kw.pop("model", None)), task=task, gpu_memory_bytes=gib * GiB,
                       gpus=gpus, sequence_len=None, estimate=stub_estimate, settings=stub_settings, **kw)


def chosen(choice):
    return choice.chosen.facts.model_id, choice.chosen.method, choice.chosen.engine


# ── choosing ─────────────────────────────────────────────────────────────────


def test_candidates_are_the_task_s_models_largest_first_instruct_preferred():
    ids = [f.model_id for f in init.candidates(MODELS, "chat")]
    assert ids == ["meta-llama/Llama-3.1-405B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
                   "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
                   "meta-llama/Llama-3.2-1B-Instruct"]
    assert [f.size for f in init.candidates(MODELS, "vision")] == ["90B Vision", "11B Vision"]
    assert [f.model_id for f in init.candidates(MODELS, "code", "qwen/qwen2.5-coder-7b-instruct")] == [
        "Qwen/Qwen2.5-Coder-7B-Instruct"]
    with pytest.raises(FtcoreError, match="not a registered model.*Qwen2.5-Coder-14B-Instruct"):
        init.candidates(MODELS, "code", "Qwen/Nope")
    with pytest.raises(FtcoreError, match="--model meta-llama/Llama-3.1-8B-Instruct: a chat model; use --task chat"):
        init.candidates(MODELS, "code", "meta-llama/Llama-3.1-8B-Instruct")


def test_chat_on_24gib_is_the_8b_with_what_the_estimate_allows_and_the_larger_ones_are_rejected():
    choice = pick("chat", 24)
    assert chosen(choice) == ("meta-llama/Llama-3.1-8B-Instruct", "lora", None)  # 8 x 2.2 + 2.1 = 19.7 GB
    rejected = [(a.facts.size, a.method) for a in choice.rejected]
    assert rejected == [("405B", "full"), ("405B", "lora"), ("405B", "qlora"), ("70B", "full"), ("70B", "lora"),
                        ("70B", "qlora"), ("8B", "full")]
    assert all(a.need > 24 * GiB for a in choice.rejected)
    PER_PARAMETER["lora"] = 3.0  # the same GPU with a dearer LoRA: QLoRA
    try:
        assert chosen(pick("chat", 24)) == ("meta-llama/Llama-3.1-8B-Instruct", "qlora", None)
    finally:
        PER_PARAMETER["lora"] = 2.2


def test_more_memory_or_more_gpus_choose_a_larger_model():
    assert chosen(pick("chat", 80)) == ("meta-llama/Llama-3.1-70B-Instruct", "qlora", None)  # 58 GB
    assert chosen(pick("chat", 16)) == ("meta-llama/Llama-3.1-8B-Instruct", "qlora", None)  # 8.5 GB
    # the Llama 3.2s when nothing larger fits
    assert chosen(pick("chat", 6)) == ("meta-llama/Llama-3.2-3B-Instruct", "qlora", None)
    eight = pick("chat", 80, gpus=8)
    assert chosen(eight) == ("meta-llama/Llama-3.1-405B-Instruct", "qlora", "zero3")  # 326 GB / 8
    assert [a.engine for a in eight.rejected[:2]] == ["zero2", "zero3"]  # each method under ZeRO-2, then ZeRO-3
    assert {gpus for _b, _s, gpus in CALLS[-len(eight.rejected) - 1:]} == {8}


def test_code_on_16gib_and_full_fine_tuning_when_it_fits():
    assert chosen(pick("code", 16)) == ("Qwen/Qwen2.5-Coder-14B-Instruct", "qlora", None)  # 13.2 GB
    assert chosen(pick("code", 7)) == ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "full", None)  # 6.1 GB: full comes first
    assert chosen(pick("code", 80, model="Qwen/Qwen2.5-Coder-7B-Instruct")) == (
        "Qwen/Qwen2.5-Coder-7B-Instruct", "full", None)


def test_the_settings_the_estimate_judges_are_the_recipe_s():
    CALLS.clear()
    pick("code", 16)
    judged = {(b, s.method): s for b, s, _g in CALLS}
    qlora = judged[(14.0, "qlora")]
    assert qlora.load_in_4bit and qlora.optimizer == "paged_adamw_8bit" and qlora.chunked_loss
    assert qlora.micro_batch_size == 1 and qlora.sequence_len == 4096 and qlora.zero_stage == 0
    assert not judged[(14.0, "lora")].load_in_4bit
    CALLS.clear()
    pick("vision", 80, gpus=2)
    assert {s.sequence_len for _b, s, _g in CALLS} == {2048}
    assert not any(s.chunked_loss for _b, s, _g in CALLS)  # mllama is not a chunked-loss architecture
    assert {s.zero_stage for _b, s, _g in CALLS} == {2, 3}


def test_nothing_fits_names_the_smallest_option_s_need():
    with pytest.raises(FtcoreError) as exc:
        pick("vision", 2)
    message = str(exc.value)
    assert "nothing for --task vision fits a GPU of 2.0 GiB" in message
    assert "Llama 3.2 Vision 11B with QLoRA, needs 10.2 GiB per GPU" in message  # 11e9 x 0.8 + 2 GiB


# ── the data ─────────────────────────────────────────────────────────────────


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


VISION_ROW = {"messages": [{"role": "user", "content": [{"type": "image", "path": "1.png"},
                                                        {"type": "text", "text": "Colour?"}]},
                           {"role": "assistant", "content": "Red."}]}


@pytest.mark.parametrize("name, rows, entry", [
    ("chats.jsonl", chat_rows(3), {"type": "chat_template"}),
    ("vision.jsonl", [VISION_ROW], {"type": "chat_template"}),
    ("conv.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}],
     {"type": "sharegpt"}),
    ("conv_roles.jsonl", [{"conversations": [{"role": "user", "content": "Hi"}]}],
     {"type": "chat_template", "field_messages": "conversations"}),
    ("alpaca.json", alpaca_rows(3), {"type": "alpaca"}),
    ("magicoder.jsonl", [{"instruction": "Sort.", "response": "sorted(x)"}],
     {"type": "alpaca", "field_output": "response"}),
    ("io.jsonl", [{"input": "2+3", "output": "5"}],
     {"type": "alpaca", "field_instruction": "input", "field_input": "context"}),
    ("segments.jsonl", [{"segments": [{"text": "Q", "label": False}, {"text": "A", "label": True}]}],
     {"type": "input_output"}),
    ("text.jsonl", [{"text": "The quick brown fox."}], {"type": "completion"}),
])
def test_data_format_is_detected_from_the_first_rows(tmp_path, name, rows, entry):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows, indent=2))
    else:
        write_jsonl(path, rows)
    found, seen = init.detect_dataset(path, "chat")
    assert found == entry
    assert entry["type"] in seen
    if name == "vision.jsonl":
        assert "image parts" in seen


def test_csv_parquet_and_a_pretty_printed_json_object(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("instruction,input,output\nAdd.,2 3,5\nSay hi.,,hi\n")
    assert init.detect_dataset(csv, "chat")[0] == {"type": "alpaca"}
    pq = _parquet(tmp_path / "docs.parquet", [{"text": "a b c", "id": 1}])
    assert init.detect_dataset(pq, "chat")[0] == {"type": "completion"}
    one = tmp_path / "one.json"
    one.write_text(json.dumps(chat_rows(1)[0], indent=2))
    assert init.detect_dataset(one, "chat")[0] == {"type": "chat_template"}


def test_a_folder_of_data_files_and_a_folder_of_source_code(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "b.jsonl", [{"text": "x"}])
    write_jsonl(data / "a.jsonl", alpaca_rows(2))
    entry, seen = init.detect_dataset(data, "chat")
    assert entry == {"type": "alpaca"} and "first of 2 data files" in seen
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "README.md").write_text("# calc\n")
    assert init.detect_dataset(repo, "code")[0] == {"type": "code_repo", "include": ["*.md", "*.py"]}
    with pytest.raises(FtcoreError, match="no .jsonl, .json, .csv, .parquet files"):
        init.detect_dataset(repo, "chat")


def test_an_unknown_shape_names_the_file_the_columns_and_the_formats(tmp_path):
    bad = write_jsonl(tmp_path / "odd.jsonl", [{"question_id": 1, "body": "x"}, {"score": 3}])
    with pytest.raises(FtcoreError) as exc:
        init.detect_dataset(bad, "chat")
    message = str(exc.value)
    assert str(bad) in message
    assert "columns found: question_id, body, score" in message
    for name in ("chat_template", "sharegpt", "alpaca", "input_output", "completion"):
        assert name in message
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(FtcoreError, match="broken.jsonl: row 2 is not valid JSON"):
        init.detect_dataset(broken, "chat")
    with pytest.raises(FtcoreError, match="unknown file type .txt"):
        init.detect_dataset(_touch(tmp_path / "notes.txt"), "chat")


def _touch(path):
    path.write_text("hello\n")
    return path


def test_the_data_path_is_relative_to_the_recipe_or_absolute(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_jsonl(tmp_path / "data" / "x.jsonl", [{"text": "a"}])
    assert init.data_path(data, tmp_path / "recipe.yaml") == "${recipe_dir:}/data/x.jsonl"
    assert init.data_path(data, tmp_path / "elsewhere" / "recipe.yaml") == data.resolve().as_posix()
    assert init.data_path(data, None) == data.resolve().as_posix()


# ── the command, with the stand-in estimate ──────────────────────────────────


@pytest.fixture
def stubbed(monkeypatch):
    monkeypatch.setattr(init, "_real_estimator", lambda: (stub_estimate, stub_settings, _parse_size))
    monkeypatch.setattr(init, "registered_models", lambda plugins: MODELS)


def _parse_size(text):
    number = float(text.lower().removesuffix("gib").removesuffix("gb"))
    unit = GiB if text.lower().endswith("gib") else 1e9 if text.lower().endswith("gb") else 1
    return int(number * unit)


def ftcore(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def validate(path):
    return subprocess.run([sys.executable, "-m", "ftcore", "validate", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=Path(path).parent)


@pytest.mark.parametrize("task", ["chat", "code", "vision"])
def test_the_written_recipe_validates_and_reads_like_a_shipped_one(stubbed, capsys, tmp_path, task):
    out = tmp_path / f"{task}.yaml"
    rc, stdout, stderr = ftcore(capsys, "init", "--task", task, "--gpu-memory", "24GiB", "--out", out)
    assert rc == 0, stderr
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == f"# ftcore run {out}"
    assert lines[1].startswith(f"# Example override: ftcore run {out} ")
    assert "# PLACEHOLDER data" in text
    assert "Estimated memory per GPU" in text and "headroom" in text
    assert "Tried first and too big" in text
    result = validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}" in stdout and "rejected:" in stdout


def test_license_and_gating_on_the_console_and_in_the_header(stubbed, capsys, tmp_path):
    out = tmp_path / "r.yaml"
    rc, stdout, _ = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--out", out)
    assert rc == 0
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert f"# License: {LICENSE} (https://example.org/license)" in header
    assert any(line.startswith("# Gated: yes: accept the license") and "Llama-3.1-8B-Instruct" in line
               for line in header)
    assert f"  license: {LICENSE}" in stdout and "  gated:   yes" in stdout
    rc, stdout, _ = ftcore(capsys, "init", "--task", "code", "--gpu-memory", "16GiB", "--out", tmp_path / "c.yaml")
    assert "  license: Apache 2.0" in stdout and "  gated:   no" in stdout


def test_data_goes_into_the_recipe_and_it_validates(stubbed, capsys, tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "chats.jsonl", chat_rows(4))
    out = tmp_path / "recipe.yaml"
    rc, stdout, stderr = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--data",
                                tmp_path / "data" / "chats.jsonl", "--out", out)
    assert rc == 0, stderr
    text = out.read_text()
    assert "  - path: ${recipe_dir:}/data/chats.jsonl\n    type: chat_template\n" in text
    assert "PLACEHOLDER" not in text
    assert validate(out).returncode == 0
    from ftcore.api import load_recipe

    recipe, _raw = load_recipe(str(out))
    assert recipe.datasets[0].path == str((tmp_path / "data" / "chats.jsonl").resolve())
    assert recipe.base_model == "meta-llama/Llama-3.1-8B-Instruct" and recipe.adapter == "lora"


def test_vision_data_with_images_and_a_note_when_the_task_and_data_disagree(stubbed, capsys, tmp_path):
    images = write_jsonl(tmp_path / "images.jsonl", [VISION_ROW])
    out = tmp_path / "v.yaml"
    rc, stdout, stderr = ftcore(capsys, "init", "--task", "vision", "--gpu-memory", "24GiB", "--data", images,
                                "--out", out)
    assert rc == 0, stderr
    assert "with image parts (chat_template)" in stdout and "text only" not in stdout
    text = out.read_text()
    assert "chat_template: llama3_2_vision" in text and "sample_packing: false" in text
    assert validate(out).returncode == 0
    rc, stdout, _ = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--data", images,
                           "--out", tmp_path / "c.yaml")
    assert rc == 0 and "it has images: --task vision" in stdout
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_rows(2))
    rc, stdout, _ = ftcore(capsys, "init", "--task", "vision", "--gpu-memory", "24GiB", "--data", chats,
                           "--out", tmp_path / "t.yaml")
    assert rc == 0 and "no image parts in its first rows" in stdout


def test_alpaca_rows_for_a_chat_model_use_its_own_template(stubbed, capsys, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(3))
    out = tmp_path / "r.yaml"
    assert ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--data", data, "--out", out)[0] == 0
    text = out.read_text()
    assert "chat_template: tokenizer_default" in text and "    type: alpaca\n" in text
    assert validate(out).returncode == 0


def test_a_source_folder_for_code_becomes_a_code_repo_entry_that_validates(stubbed, capsys, tmp_path):
    repo = tmp_path / "my_project"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    out = tmp_path / "recipe.yaml"
    rc, stdout, stderr = ftcore(capsys, "init", "--task", "code", "--gpu-memory", "16GiB", "--data", repo,
                                "--out", out)
    assert rc == 0, stderr
    assert "  - path: ${recipe_dir:}/my_project\n    type: code_repo\n    include: ['*.py']\n" in out.read_text()
    assert validate(out).returncode == 0


def test_bad_data_is_exit_2_and_nothing_written(stubbed, capsys, tmp_path):
    bad = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    rc, _, stderr = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--data", bad,
                           "--out", tmp_path / "r.yaml")
    assert rc == 2
    assert stderr.startswith("error: --data ") and "columns found: foo" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "r.yaml").exists()


def test_an_existing_out_file_is_refused_unless_force(stubbed, capsys, tmp_path):
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n")
    rc, _, stderr = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--out", out)
    assert rc == 2 and "exists" in stderr and "--force" in stderr
    assert out.read_text() == "mine\n"
    rc, _, _ = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24GiB", "--out", out, "--force")
    assert rc == 0 and out.read_text().startswith("# ftcore run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no temp file left


def test_nothing_fits_is_exit_2_naming_the_need(stubbed, capsys, tmp_path):
    rc, _, stderr = ftcore(capsys, "init", "--task", "vision", "--gpu-memory", "2GiB", "--out", tmp_path / "v.yaml")
    assert rc == 2 and "nothing for --task vision fits" in stderr and "needs 10.2 GiB" in stderr
    assert not (tmp_path / "v.yaml").exists()


def test_a_size_without_unit_is_refused(stubbed, capsys, tmp_path):
    rc, _, stderr = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "24", "--out", tmp_path / "r.yaml")
    assert rc == 2 and "--gpu-memory 24: 24 bytes is no GPU; give a unit, e.g. 24GiB" in stderr
    assert not (tmp_path / "r.yaml").exists()


def test_a_hint_when_a_shorter_sequence_would_fit_the_next_larger_model(capsys, tmp_path, monkeypatch):
    def with_activations(config, settings, *, gpu_memory_bytes=None, gpus=1):
        result = stub_estimate(config, settings, gpu_memory_bytes=gpu_memory_bytes, gpus=gpus)
        result.total_bytes += settings.sequence_len * 10 ** 6  # 4.1 GB at 4,096 tokens, 2 GB at 2,048
        return result

    monkeypatch.setattr(init, "_real_estimator", lambda: (with_activations, stub_settings, _parse_size))
    monkeypatch.setattr(init, "registered_models", lambda plugins: MODELS)
    rc, stdout, _ = ftcore(capsys, "init", "--task", "code", "--gpu-memory", "16GiB", "--out", tmp_path / "r.yaml")
    assert rc == 0 and "  model:   Qwen/Qwen2.5-Coder-7B-Instruct" in stdout
    assert "hint: with --sequence-len 2048, Qwen2.5 Coder 14B with QLoRA would fit (14.3 GiB per GPU)" in stdout
    rc, stdout, _ = ftcore(capsys, "init", "--task", "code", "--gpu-memory", "16GiB", "--sequence-len", "2048",
                           "--out", tmp_path / "s.yaml")
    assert rc == 0 and "Qwen2.5-Coder-14B-Instruct" in stdout and "hint:" not in stdout
    assert "sequence_len: 2048" in (tmp_path / "s.yaml").read_text()


def test_json_is_one_object_and_several_gpus_run_under_deepspeed(stubbed, capsys, tmp_path):
    out = tmp_path / "big.yaml"
    rc, stdout, _ = ftcore(capsys, "init", "--task", "chat", "--gpu-memory", "80GiB", "--gpus", "8", "--out", out,
                           "--json")
    assert rc == 0
    report = json.loads(stdout)
    assert report["model"] == "meta-llama/Llama-3.1-405B-Instruct" and report["method"] == "qlora"
    assert report["deepspeed"] == "zero3" and report["gpus"] == 8 and report["gated"] is True
    assert report["gpu_memory_bytes"] == 80 * GiB and report["fits"] is True
    assert report["rejected"][0] == {"model": "meta-llama/Llama-3.1-405B-Instruct", "size": "405B", "method": "full",
                                     "deepspeed": "zero2", "total_bytes": report["rejected"][0]["total_bytes"],
                                     "fits": False}
    text = out.read_text()
    assert text.startswith(f"# ftcore run {out} --nproc 8\n")
    assert "deepspeed: zero3" in text and "bnb_4bit_quant_storage: bfloat16" in text
    assert "chunked_cross_entropy" not in text  # it refuses ZeRO-3
    assert validate(out).returncode == 0


def test_out_dash_prints_the_recipe(stubbed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, stderr = ftcore(capsys, "init", "--task", "code", "--gpu-memory", "16GiB", "--out", "-")
    assert rc == 0 and stdout.startswith("# ftcore run recipe.yaml\n") and "base_model: Qwen/" in stdout
    assert "recipe printed above" in stderr
    assert list(tmp_path.iterdir()) == []


# ── end to end: memory.py and the registered facts, as `ftcore init` runs ────

PROBE = """
import json, sys, time
start = time.perf_counter()
from ftcore.cli import main
rc = main(sys.argv[1:])
print("PROBE " + json.dumps({"rc": rc, "seconds": time.perf_counter() - start, "torch": "torch" in sys.modules,
                             "transformers": "transformers" in sys.modules}))
"""


def _real():
    from ftcore.plugins.planning import memory

    return memory


def test_init_imports_neither_torch_nor_transformers(tmp_path):
    _real()
    result = subprocess.run([sys.executable, "-c", PROBE, "init", "--task", "chat", "--gpu-memory", "24GiB",
                             "--out", "r.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    probe = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe, result.stdout + result.stderr
    report = json.loads(probe[-1].removeprefix("PROBE "))
    assert report["rc"] == 0, result.stderr
    assert not report["torch"] and not report["transformers"]
    assert (tmp_path / "r.yaml").exists()


def _init_json(tmp_path, *args):
    out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.yaml"
    result = subprocess.run([sys.executable, "-m", "ftcore", "init", *map(str, args), "--out", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    return result, out


@pytest.mark.parametrize("task, gpu_memory, family", [("chat", "24GiB", "Llama 3.1"),
                                                      ("code", "16GiB", "Qwen2.5 Coder"),
                                                      ("vision", "24GiB", "Llama 3.2 Vision")])
def test_real_choice_fits_by_ftcore_estimate_and_validates(tmp_path, task, gpu_memory, family):
    memory = _real()
    result, out = _init_json(tmp_path, "--task", task, "--gpu-memory", gpu_memory)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"] == family and report["fits"] is True
    assert report["total_bytes"] <= memory.parse_size(gpu_memory) == report["gpu_memory_bytes"]
    assert validate(out).returncode == 0
    # what ftcore estimate makes of the written recipe is what init judged
    again = subprocess.run([sys.executable, "-m", "ftcore", "estimate", str(out), "--gpu-memory", gpu_memory,
                            "--json"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    estimate = json.loads(again.stdout)
    assert estimate["fits"] is True
    assert estimate["total_bytes"] == report["total_bytes"]


def test_real_choice_grows_with_memory_and_gpus(tmp_path):
    _real()
    sizes = {}
    for memory, gpus in (("24GiB", 1), ("80GiB", 1), ("80GiB", 8)):
        result, _out = _init_json(tmp_path, "--task", "chat", "--gpu-memory", memory, "--gpus", gpus)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        sizes[memory, gpus] = report["parameters"]
        if (memory, gpus) == ("24GiB", 1):
            assert report["model"] == "meta-llama/Llama-3.1-8B-Instruct" and report["method"] in ("lora", "qlora")
            assert report["license"] == "Llama 3.1 Community License" and report["gated"] is True
            assert {r["size"] for r in report["rejected"]} >= {"405B", "70B"}
    assert sizes["24GiB", 1] < sizes["80GiB", 1] <= sizes["80GiB", 8]


def test_real_nothing_fits_is_exit_2(tmp_path):
    _real()
    result, out = _init_json(tmp_path, "--task", "vision", "--gpu-memory", "2GiB")
    assert result.returncode == 2
    assert "nothing for --task vision fits a GPU of 2.0 GiB" in result.stderr
    assert "the smallest option, Llama 3.2 Vision 11B with QLoRA, needs" in result.stderr
    assert not out.exists()
