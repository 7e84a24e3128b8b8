"""Several processes: ``ftcore run --nproc 2`` with DDP, DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo).

Every distributed run is compared with one process at the same global batch (4
examples a step: 2 x 2 accumulation on one process, 2 x 1 on each of two): the
loss at each step must agree within 1e-3 relative, and the saved adapter or
model, loaded with plain transformers/peft, must give the same logits. Each
configuration runs once per module (DeepSpeed's first run on a fresh machine
compiles a communication op, about 80 s); several tests read each run.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import alpaca_rows, write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
DIE = '''
import os, signal, time
from transformers import TrainerCallback
from ftcore import hookimpl

class Misbehave(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2 and os.environ.get("RANK") == "1":
            if os.environ.get("TEST_HANG"):
                time.sleep(300)
            os.kill(os.getpid(), signal.SIGKILL)

@hookimpl
def trainer_callbacks(recipe, register):
    register(Misbehave())
'''


def ftcore(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ftcore", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = write_jsonl(root / "data.jsonl", alpaca_rows(32))
    full = write_recipe(root / "full.yaml", base_model=str(tiny_llama),
                        datasets=[{"path": str(data), "type": "alpaca"}], sequence_len=256, sample_packing=True,
                        micro_batch_size=2, gradient_accumulation_steps=2, max_steps=STEPS, optimizer="adamw_torch",
                        learning_rate=1e-3, lr_scheduler="constant", logging_steps=1, seed=7)
    (root / "misbehave_plugin.py").write_text(DIE)
    return {"root": root, "data": data, "full": full, "model": tiny_llama, "runs": {}}


def lora_command(setup, out, *extra):
    """The shipped LoRA recipe, as the issue runs it, shrunk to the tiny model (packing stays on)."""
    return ["run", REPO / "recipes/llama31-lora.yaml", f"base_model={setup['model']}",
            f"datasets=[{{path: {setup['data']}, type: alpaca}}]", "val_set_size=0", "sequence_len=256",
            "lora_dropout=0", f"max_steps={STEPS}", "learning_rate=1e-2", "warmup_ratio=null", "saves_per_epoch=null",
            "logging_steps=1", f"output_dir={out}", *extra]


def run(setup, name):
    """Run configuration ``name`` once per module: ``one``/``ddp``/``zero2``/``zero3`` x ``lora``/``full``."""
    if name in setup["runs"]:
        return setup["runs"][name]
    engine, adapter = name.split("-")
    out = setup["root"] / name
    extra, env = [], None
    if engine == "one":
        extra = ["gradient_accumulation_steps=2"]
        if adapter == "full":  # as if a launcher had started this one process: `--nproc 2` must not launch again
            extra.append("--nproc=2")
            from ftcore.plugins.distributed.launch import free_port

            env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port())}
    else:
        extra = ["gradient_accumulation_steps=1"] + ([f"deepspeed={engine}"] if engine != "ddp" else [])
        if name == "zero3-lora":
            extra.append("save_steps=2")  # checkpoints for the resume test
        extra.append("--nproc=2")
    if adapter == "lora":
        command = lora_command(setup, out, *extra)
    elif adapter == "qlora":
        command = lora_command(setup, out, "adapter=qlora", "load_in_4bit=true", *extra)
    elif adapter == "chunked":  # LoRA with the loss scored in chunks outside the model's forward
        command = lora_command(setup, out, "chunked_cross_entropy=true", "chunked_cross_entropy_num_chunks=3", *extra)
    else:
        command = ["run", setup["full"], f"output_dir={out}", *extra]
    started = time.monotonic()
    result = ftcore(*command, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    setup["runs"][name] = (out, result, time.monotonic() - started)
    return setup["runs"][name]


ENGINES = ["ddp", "zero2", "zero3"]
CASES = [f"{e}-{a}" for a in ("lora", "full") for e in ENGINES]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_two_processes_match_one_at_the_same_global_batch(setup, name):
    out, result, seconds = run(setup, name)
    one, _, _ = run(setup, "one-" + name.split("-")[1])
    assert "launch: 2 process(es) with torchrun" in result.stdout
    assert "global batch 4 = 2 x 1 x 2" in result.stdout  # micro batch x accumulation x world size
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 2
    got, want = losses(out), losses(one)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-3), (step, got, want)
    assert got[STEPS] < got[1]  # and it trained
    print(f"{name}: losses {[round(got[s], 5) for s in sorted(got)]} vs one process "
          f"{[round(want[s], 5) for s in sorted(want)]}; {seconds:.0f} s")


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def load(out: Path, base: Path, adapter: str):
    """With plain transformers and peft: no DeepSpeed, no ftcore."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if adapter == "lora":
        assert not (out / "model.safetensors").exists()
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), out)
    assert not (out / "adapter_config.json").exists()
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_saved_model_loads_plainly_and_equals_the_one_process_result(setup, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = run(setup, name)
    one, _, _ = run(setup, "one-" + name.split("-")[1])
    adapter = name.split("-")[1]
    ids = torch.tensor([AutoTokenizer.from_pretrained(out)("Reverse the words: red green blue")["input_ids"]])
    got = logits(load(out, setup["model"], adapter), ids)
    want = logits(load(one, setup["model"], adapter), ids)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
    untrained = logits(AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32), ids)
    assert (got - untrained).abs().max() > 1e-2  # the saved weights are the trained ones, gathered


@pytest.mark.slow
def test_the_issue_command_zero3_lora_through_the_cli_with_a_plain_peft_adapter(setup):
    """`ftcore run recipes/llama31-lora.yaml ... deepspeed=zero3 --nproc 2`: what the issue checks."""
    out, result, _ = run(setup, "zero3-lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    one = load_file(run(setup, "one-lora")[0] / "adapter_model.safetensors")
    assert set(weights) == set(one)
    for key in one:  # full shapes: gathered from the ZeRO-3 partitions, not a rank's shard
        assert weights[key].shape == one[key].shape
        # Adam scales each element's step to about learning_rate whatever its gradient, so an element
        # with a near-zero gradient can differ by float noise times that; compare each matrix as a whole
        assert (weights[key] - one[key]).norm() <= 1e-2 * one[key].norm(), key
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_qlora_under_ddp_matches_one_process(setup):
    """QLoRA: each rank holds the whole 4-bit base; only the LoRA weights' gradients are averaged."""
    from safetensors.torch import load_file

    out, result, _ = run(setup, "ddp-qlora")
    one, _, _ = run(setup, "one-qlora")
    assert "qlora" in result.stdout and "global batch 4 = 2 x 1 x 2" in result.stdout
    got, want = losses(out), losses(one)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-3)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert (a[key] - b[key]).norm() <= 1e-2 * b[key].norm(), key  # as in the ZeRO-3 test above


@pytest.mark.slow
def test_chunked_cross_entropy_under_ddp_matches_one_process(setup):
    """The chunks run outside DDP's forward; their gradients must still be averaged across ranks."""
    from safetensors.torch import load_file

    out, result, _ = run(setup, "ddp-chunked")
    one_chunked, _, _ = run(setup, "one-chunked")
    one_plain, _, _ = run(setup, "one-lora")
    assert "global batch 4 = 2 x 1 x 2" in result.stdout
    got, want = losses(out), losses(one_plain)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:  # the same loss as the model's own, step by step
        assert got[step] == pytest.approx(want[step], rel=1e-5)
    # two processes end with the adapter one process trains with the same loss (measured: identical)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(one_chunked / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert (a[key] - b[key]).norm() <= 1e-5 * b[key].norm(), key


@pytest.mark.slow
def test_resume_from_a_zero3_checkpoint_with_two_processes_continues_identically(setup):
    out, _, _ = run(setup, "zero3-lora")
    first = losses(out)
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own sharded checkpoint
    result = ftcore(*lora_command(setup, out, "gradient_accumulation_steps=1", "deepspeed=zero3",
                                  f"resume_from_checkpoint={out / 'checkpoint-2'}", "--nproc=2"))
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps))  # the resume dropped the first run's records after step 2: none twice
    assert json.loads((out / "run.json").read_text())["resumed_from"] == "checkpoint-2"
    continued = {r["step"]: r["loss"] for r in records if "loss" in r and r["step"] > 2}
    assert sorted(continued) == [3, 4]  # steps 1-2 came from the checkpoint
    for step in continued:
        assert continued[step] == pytest.approx(first[step], rel=1e-4)


@pytest.mark.slow
def test_a_process_already_launched_just_runs(setup):
    out, result, _ = run(setup, "one-full")  # RANK/LOCAL_RANK/WORLD_SIZE set, --nproc 2 given
    assert "launch:" not in result.stdout
    assert "global batch 4 = 2 x 2 x 1" in result.stdout
    assert json.loads((out / "run.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_quickly_with_a_message_naming_it(setup):
    out = setup["root"] / "killed"
    started = time.monotonic()
    result = ftcore(*lora_command(setup, out, "max_steps=50", "gradient_accumulation_steps=1",
                                  "plugins=[misbehave_plugin]", "--nproc=2"),
                    env={"PYTHONPATH": str(setup["root"])}, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 60
    assert "rank 1 (local rank 1" in result.stderr and "killed by SIGKILL" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((out / "run.json").read_text())["status"] != "completed"


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_after_ddp_timeout(setup):
    out = setup["root"] / "stalled"
    started = time.monotonic()
    result = ftcore(*lora_command(setup, out, "max_steps=50", "gradient_accumulation_steps=1", "ddp_timeout=12",
                                  "plugins=[misbehave_plugin]", "--nproc=2"),
                    env={"PYTHONPATH": str(setup["root"]), "TEST_HANG": "1"}, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 60  # rank 1 sleeps 300 s; rank 0 gives up after ddp_timeout (12 s)
    assert "rank 0 lost contact with the other processes" in result.stderr
    assert "Timed out waiting 12000ms" in result.stderr
    assert "rank 0 (local rank 0" in result.stderr
    assert "Traceback" not in result.stderr


# ── without processes: configs, keys, launch commands ─────────────────────────


def recipe(tmp_path, **keys):
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import load_raw, validate

    path = write_recipe(tmp_path / "r.yaml", base_model="m", datasets=[{"path": "d.jsonl", "type": "alpaca"}], **keys)
    plugins = load_plugins()
    return validate(load_raw(str(path), [], {}), plugins)


@pytest.mark.parametrize("preset,stage", [("zero1", 1), ("zero2", 2), ("zero3", 3), ("zero3_offload", 3)])
def test_shipped_deepspeed_configs_leave_batch_and_precision_to_the_recipe(tmp_path, preset, stage):
    from ftcore.plugins.distributed import trainer_arguments

    config = trainer_arguments(recipe(tmp_path, deepspeed=preset))["deepspeed"]
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        assert config[key] == "auto"  # filled by transformers from micro_batch_size, ... and world size
    assert config["bf16"]["enabled"] == "auto" and "optimizer" not in config  # the recipe's optimizer is used
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ("offload_param" in config["zero_optimization"]) == (preset == "zero3_offload")


def test_deepspeed_takes_the_users_json_and_names_a_bad_one(tmp_path):
    from ftcore.plugins.distributed import trainer_arguments

    mine = tmp_path / "ds.json"
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    assert trainer_arguments(recipe(tmp_path, deepspeed=str(mine)))["deepspeed"]["zero_optimization"]["stage"] == 2

    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    for value, words in ((str(broken), [str(broken), "not valid JSON", "line 1"]),
                         (str(tmp_path / "nope.json"), ["nope.json", "zero1, zero2, zero3, zero3_offload"]),
                         ("zero4", ["no file 'zero4'"])):
        path = write_recipe(tmp_path / "bad.yaml", base_model="m", datasets=[{"path": "d", "type": "alpaca"}],
                            deepspeed=value)
        result = ftcore("validate", path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "deepspeed" in result.stderr and all(w in result.stderr for w in words), result.stderr


def test_fsdp_keys_in_axolotls_spelling_become_accelerates_fsdp2_plugin(tmp_path):
    from transformers import TrainingArguments

    from ftcore.plugins.distributed import fsdp_config

    r = recipe(tmp_path, fsdp=["full_shard", "auto_wrap"], fsdp_version=2,
               fsdp_config={"fsdp_offload_params": True, "fsdp_cpu_ram_efficient_loading": True,
                            "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"})
    config = fsdp_config(r)
    assert config == {"version": 2, "reshard_after_forward": True, "cpu_offload": True,
                      "cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT",
                      "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}
    plugin = TrainingArguments(output_dir=str(tmp_path), report_to=[], fsdp=True, fsdp_config=config).fsdp_plugin_args
    assert plugin == {"fsdp_version": 2, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                      "transformer_cls_names_to_wrap": "LlamaDecoderLayer", "cpu_ram_efficient_loading": True,
                      "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}
    # without a layer class, accelerate wraps the model's own _no_split_modules (the decoder layer)
    default = fsdp_config(recipe(tmp_path, fsdp=["shard_grad_op", "auto_wrap"]))
    assert default["reshard_after_forward"] is False and "transformer_layer_cls_to_wrap" not in default
    from transformers import LlamaForCausalLM

    assert LlamaForCausalLM._no_split_modules == ["LlamaDecoderLayer"]


@pytest.mark.parametrize("keys,key,words", [
    ({"deepspeed": "zero3", "fsdp": ["full_shard"]}, "fsdp", "choose one engine"),
    ({"fsdp_version": 2}, "fsdp_version", "FSDP is not configured"),
    ({"fsdp": ["full_shard"], "fsdp_config": {"fsdp_sharding_strategy": "HYBRID_SHARD"}}, "fsdp_config.sharding_strategy",
     "not available with FSDP2"),
    ({"fsdp": ["full_shard"], "fsdp_config": {"fsdp_wrap_everything": True}}, "fsdp_config", "unknown key"),
    ({"fsdp": ["full_shard"], "fsdp_version": 1}, "fsdp_version", "FSDP2"),
    ({"deepspeed": "zero3", "adapter": "qlora", "load_in_4bit": True}, "bnb_4bit_quant_storage", "bfloat16"),
    ({"fsdp": ["full_shard"], "adapter": "qlora", "load_in_4bit": True, "bnb_4bit_quant_storage": "uint8"},
     "bnb_4bit_quant_storage", "FSDP"),
    ({"deepspeed": "zero3", "adapter": "lora", "load_in_8bit": True}, "load_in_8bit", "ZeRO-3"),
])
def test_engine_combinations_that_cannot_work_fail_at_validation(tmp_path, keys, key, words):
    from ftcore.errors import RecipeError

    with pytest.raises(RecipeError) as error:
        recipe(tmp_path, **keys)
    assert key in str(error.value) and words in str(error.value)


def test_qlora_under_zero3_with_float_storage_and_qlora_under_zero2_validate(tmp_path):
    recipe(tmp_path, deepspeed="zero3", adapter="qlora", load_in_4bit=True, bnb_4bit_quant_storage="bfloat16")
    recipe(tmp_path, deepspeed="zero2", adapter="qlora", load_in_4bit=True)


def test_fsdp_needs_gpus_and_says_so_on_a_machine_without(tmp_path):
    from ftcore.errors import FtcoreError
    from ftcore.plugins.distributed import trainer_arguments

    r = recipe(tmp_path, fsdp=["full_shard", "auto_wrap"])
    if torch.cuda.is_available():
        assert trainer_arguments(r)["fsdp"] is True
    else:
        with pytest.raises(FtcoreError, match="FSDP runs on GPUs only"):
            trainer_arguments(r)


def test_launch_commands_parse_with_each_launchers_own_parser():
    from torch.distributed.run import get_args_parser

    from ftcore.api import Plan
    from ftcore.plugins.distributed.launch import accelerate_argv, deepspeed_argv, torchrun_argv

    command = ["run", "r.yaml", "lr=1"]
    plan = Plan(nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    args = get_args_parser().parse_args(torchrun_argv(plan, command))
    assert (args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port) == \
        ("4", "2", 1, "10.0.0.1", 29400)
    assert args.module and args.training_script == "ftcore" and args.training_script_args == command
    assert args.max_restarts == 0

    from accelerate.commands.launch import launch_command_parser

    args = launch_command_parser().parse_args(accelerate_argv(plan, command))
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip,
            args.main_process_port) == (8, 2, 1, "10.0.0.1", 29400)
    assert args.module and args.training_script == "ftcore" and args.training_script_args == command

    from deepspeed.launcher.runner import parse_args

    args = parse_args(deepspeed_argv(plan, command))
    assert (args.num_gpus, args.num_nodes, args.master_addr, args.master_port) == (4, 2, "10.0.0.1", 29400)
    assert args.module and args.no_local_rank and args.user_script == "ftcore" and args.user_args == command


@pytest.mark.parametrize("flags,words", [
    (["--nproc", "0"], "at least 1"),
    (["--nnodes", "2"], "--master-addr"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "between 0 and"),
])
def test_bad_launch_flags_fail_before_anything_starts(tmp_path, flags, words):
    path = write_recipe(tmp_path / "r.yaml", base_model=str(tmp_path), datasets=[{"path": "d", "type": "alpaca"}])
    (tmp_path / "d").write_text("{}\n")
    result = ftcore("run", path, f"output_dir={tmp_path / 'out'}", *flags)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_failure_message_names_the_rank_that_died_not_the_ones_stopped_after():
    from types import SimpleNamespace

    from ftcore.api import Plan
    from ftcore.plugins.distributed.launch import failure_message

    failures = {0: SimpleNamespace(local_rank=0, pid=10, exitcode=-15),
                3: SimpleNamespace(local_rank=1, pid=11, exitcode=-9)}
    message = failure_message(failures, Plan(nproc=2, nnodes=2, node_rank=1, master_addr="h"))
    assert message.startswith("training process rank 3 (local rank 1 on node 1, pid 11) was killed by SIGKILL")
    assert "rank(s) 0 were then stopped" in message
    exited = failure_message({1: SimpleNamespace(local_rank=1, pid=12, exitcode=2)}, Plan(nproc=2))
    assert "rank 1 (local rank 1, pid 12) exited with code 2 (its error is above)" in exited


def test_fsdp_without_gpus_fails_once_before_any_process_starts(tmp_path):
    if torch.cuda.is_available():
        return  # FSDP runs there; the check below is for machines without a GPU
    path = write_recipe(tmp_path / "r.yaml", base_model=str(tmp_path), datasets=[{"path": "d", "type": "alpaca"}],
                        fsdp=["full_shard", "auto_wrap"])
    (tmp_path / "d").write_text("{}\n")
    result = ftcore("run", path, f"output_dir={tmp_path / 'out'}", "--nproc", "2")
    assert result.returncode == 2 and result.stderr.count("FSDP runs on GPUs only") == 1
    assert "launch:" not in result.stdout and "Traceback" not in result.stderr


def test_launcher_is_a_key_of_the_plugin_and_an_unknown_one_is_refused(tmp_path):
    from ftcore.errors import RecipeError

    assert recipe(tmp_path, launcher="accelerate").launcher == "accelerate"
    with pytest.raises(RecipeError) as error:
        recipe(tmp_path, launcher="mpirun")
    assert "launcher" in str(error.value) and "torchrun, accelerate, deepspeed" in str(error.value)


def test_launching_is_the_plugins_answer_and_the_engines_get_a_process_group_even_of_one(tmp_path, monkeypatch):
    from ftcore import hooks
    from ftcore.api import Plan
    from ftcore.plugins.distributed import launch
    from ftcore.plugins_manager import load_plugins

    started = []
    monkeypatch.setattr(launch, "launch", lambda plan, command, launcher: started.append((plan.nproc, launcher)) or 0)
    plugins = load_plugins()
    assert hooks.launch_processes(plugins, recipe(tmp_path), Plan(nproc=1), ["run"]) is None  # trains here
    assert hooks.launch_processes(plugins, recipe(tmp_path, deepspeed="zero2"), Plan(nproc=1), ["run"]) == 0
    assert hooks.launch_processes(plugins, recipe(tmp_path, launcher="deepspeed"), Plan(nproc=2), ["run"]) == 0
    assert started == [(1, "torchrun"), (2, "deepspeed")]


def test_ddp_keys_become_training_arguments(tmp_path):
    from ftcore.plugins.distributed import trainer_arguments

    arguments = trainer_arguments(recipe(tmp_path, ddp_timeout=12, ddp_find_unused_parameters=False))
    assert arguments["ddp_timeout"] == 12 and arguments["ddp_find_unused_parameters"] is False


def test_run_finished_puts_back_what_run_started_changed_for_the_run(tmp_path, monkeypatch):
    """The accelerate patch (CPU only) and the warnings rule last for one run, not for the process."""
    import warnings

    from accelerate.state import PartialState

    from ftcore import hooks
    from ftcore.api import Stash
    from ftcore.plugins_manager import load_plugins

    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process: no process group to start
    plugins, r, stash = load_plugins(), recipe(tmp_path, deepspeed="zero2"), Stash()
    backend, filters = PartialState.__dict__["_prepare_backend"], list(warnings.filters)
    hooks.run_started(plugins, r, stash)
    assert (PartialState.__dict__["_prepare_backend"] is backend) == torch.cuda.is_available()
    assert len(warnings.filters) == len(filters) + 1
    assert warnings.filters[0][0] == "ignore" and warnings.filters[0][2] is FutureWarning
    hooks.run_finished(plugins, r, stash, "completed", None)
    assert PartialState.__dict__["_prepare_backend"] is backend
    assert warnings.filters == filters


def test_a_failed_collective_is_reported_in_one_line_naming_the_rank(tmp_path, monkeypatch):
    from ftcore import hooks
    from ftcore.api import Stash
    from ftcore.plugins.distributed.launch import LaunchError
    from ftcore.plugins_manager import load_plugins

    plugins, r = load_plugins(), recipe(tmp_path)
    lost = RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234\nmore detail")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(LaunchError) as error:
        hooks.run_finished(plugins, r, Stash(), "failed", lost)
    assert str(error.value) == ("rank 1 lost contact with the other processes ([gloo] Connection closed by peer "
                                "[127.0.0.1]:1234); another rank failed or stalled longer than ddp_timeout")
    assert error.value.exit_code == 1
    hooks.run_finished(plugins, r, Stash(), "failed", ValueError("bad value"))  # any other error stays as it is
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process has no other rank to lose
    hooks.run_finished(plugins, r, Stash(), "failed", lost)


WITHOUT = {"FTCORE_DISABLE_PLUGINS": "distributed"}


def plain_recipe(tmp_path, model, **keys):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    return write_recipe(tmp_path / "plain.yaml", base_model=str(model), datasets=[{"path": str(data), "type": "alpaca"}],
                        sequence_len=256, micro_batch_size=2, max_steps=2, logging_steps=1, optimizer="adamw_torch",
                        **keys)


def test_without_the_distributed_plugin_several_processes_and_its_keys_are_refused(tmp_path):
    """FTCORE_DISABLE_PLUGINS=distributed: --nproc 2 has nobody to launch it; the plugin's keys are unknown."""
    plain = plain_recipe(tmp_path, tmp_path)
    assert ftcore("validate", plain, env=WITHOUT).returncode == 0
    result = ftcore("run", plain, f"output_dir={tmp_path / 'two'}", "--nproc", "2", env=WITHOUT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no plugin provides launching several processes" in result.stderr
    assert not (tmp_path / "two").exists()

    engine = write_recipe(tmp_path / "engine.yaml", base_model=str(tmp_path),
                          datasets=[{"path": str(tmp_path / "data.jsonl"), "type": "alpaca"}],
                          deepspeed="zero2", launcher="accelerate")
    result = ftcore("validate", engine, env=WITHOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    hint = "plugins disabled by FTCORE_DISABLE_PLUGINS may provide it: distributed"
    lines = {line.strip().partition(":")[0]: line for line in result.stderr.splitlines()}
    assert "no plugin provides" in lines["deepspeed"] and hint in lines["deepspeed"]
    assert "unknown key" in lines["launcher"] and hint in lines["launcher"]


@pytest.mark.slow
def test_without_the_distributed_plugin_one_process_still_trains(tiny_llama, tmp_path):
    result = ftcore("run", plain_recipe(tmp_path, tiny_llama), f"output_dir={tmp_path / 'one'}", env=WITHOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launch:" not in result.stdout
    manifest = json.loads((tmp_path / "one" / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 1
    assert "distributed" not in [p["name"] for p in manifest["plugins"]]
