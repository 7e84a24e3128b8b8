"""Trackers: report_to and Axolotl's tracker keys reach transformers' integrations.

One short tiny run reports to TensorBoard and to MLflow (a local file store) at once; the tests
read both back with the trackers' own readers and compare them with the run's metrics.jsonl.
"""

import os

import pytest

from ftcore.testing import alpaca_rows, load_recipe, recipe_problems, run_recipe, write_jsonl

BASE = {"base_model": "x/y"}


def arguments(**keys):
    from ftcore.plugins.trackers import trainer_arguments

    return trainer_arguments(load_recipe({**BASE, **keys}))


# ── which trackers, from which keys ──────────────────────────────────────────


def test_report_to_takes_one_tracker_or_a_list_and_axolotls_keys_add_theirs():
    assert arguments(report_to="tensorboard") == {"report_to": ["tensorboard"]}
    assert arguments(report_to=["mlflow", "tensorboard"]) == {"report_to": ["tensorboard", "mlflow"]}
    assert arguments(use_tensorboard=True, mlflow_tracking_uri="/tmp/ml", mlflow_run_name="r1") == {
        "report_to": ["tensorboard", "mlflow"], "run_name": "r1"}
    assert arguments(wandb_project="p", wandb_name="n") == {"report_to": ["wandb"], "run_name": "n"}  # validates without wandb
    assert arguments(report_to="none") is None and arguments() is None and arguments(use_mlflow=False) is None


def test_bad_tracker_names_and_contradictions_are_refused_at_validation():
    problems = dict(recipe_problems({**BASE, "report_to": ["tensorbord"]}))
    assert "report_to" in str(problems) and "tensorboard" in str(problems)
    assert "report_to" in dict(recipe_problems({**BASE, "report_to": ["none", "mlflow"]}))
    assert "use_tensorboard" in dict(recipe_problems({**BASE, "report_to": "none", "use_tensorboard": True}))
    problems = dict(recipe_problems({**BASE, "mlflow_run_name": "a", "wandb_name": "b", "use_mlflow": True}))
    assert "mlflow_run_name" in problems and "'a'" in problems["mlflow_run_name"]


@pytest.mark.parametrize("keys, key, extra", [
    ({"report_to": "tensorboard"}, "report_to", "tensorboard"),
    ({"use_tensorboard": True}, "use_tensorboard", "tensorboard"),
    ({"use_mlflow": True}, "use_mlflow", "mlflow"),
    ({"mlflow_tracking_uri": "/tmp/x"}, "mlflow_tracking_uri", "mlflow"),
    ({"report_to": "wandb", "wandb_project": "p"}, "report_to", "wandb"),
])
def test_a_missing_tracker_library_is_named_at_validation_with_its_install_command(monkeypatch, keys, key, extra):
    import ftcore.plugins.trackers as plugin

    monkeypatch.setattr(plugin, "installed", lambda name: False)
    problems = recipe_problems({**BASE, **keys})
    assert [k for k, _ in problems] == [key]
    assert f"pip install 'ftcore[{extra}]'" in problems[0][1]


def test_wandb_project_without_wandb_stops_the_run_before_anything_loads(monkeypatch):
    import ftcore.plugins.trackers as plugin
    from ftcore.api import FtcoreError, Stash

    monkeypatch.setattr(plugin, "installed", lambda name: name != "wandb")
    recipe = load_recipe({**BASE, "wandb_project": "p"})
    with pytest.raises(FtcoreError, match=r"wandb_project: .*pip install 'ftcore\[wandb\]'"):
        plugin.run_started(recipe, Stash())


def test_tracker_keys_without_the_plugin_name_the_missing_feature():
    from ftcore.testing import fresh_plugins

    problems = dict(recipe_problems({**BASE, "use_mlflow": True}, plugins=fresh_plugins(block=("trackers",))))
    assert "no plugin provides experiment tracking" in problems["use_mlflow"]


# ── one run, read back from TensorBoard's and MLflow's files ─────────────────

MLFLOW_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "HF_MLFLOW_LOG_ARTIFACTS", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(scope="module")
def tracked(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trackers")
    data = write_jsonl(folder / "alpaca.jsonl", alpaca_rows(24))
    before = {var: os.environ.get(var) for var in MLFLOW_VARS}
    store = folder / "mlruns"
    run = run_recipe({"base_model": str(tiny_llama), "datasets": [{"path": str(data), "type": "alpaca"}],
                      "val_set_size": 0.25, "sequence_len": 512, "micro_batch_size": 4, "max_steps": 6,
                      "learning_rate": 5e-3, "logging_steps": 2, "eval_steps": 3,
                      "report_to": ["tensorboard", "mlflow"], "mlflow_tracking_uri": store.as_uri(),
                      "mlflow_experiment_name": "ftcore-test", "mlflow_run_name": "tiny"},
                     output_dir=folder / "out")
    return run, store, before


def train_losses(records) -> dict:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_tensorboard_event_files_hold_the_train_loss_of_metrics_jsonl(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = tracked
    folders = {p.parent for p in (run.output_dir / "runs").rglob("events.out.tfevents.*")}
    assert len(folders) == 1
    events = EventAccumulator(str(folders.pop()))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx(train_losses(run.records)) and set(logged) == {1, 2, 4, 6}
    evals = {e.step: e.value for e in events.Scalars("eval/loss")}
    assert evals == pytest.approx({r["step"]: r["eval_loss"] for r in run.records if "eval_loss" in r})


def test_mlflow_records_the_named_run_with_the_metrics_of_metrics_jsonl(tracked):
    from mlflow.tracking import MlflowClient

    run, store, _ = tracked
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("ftcore-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "loss")}
    assert history == pytest.approx(train_losses(run.records))
    assert found.data.params["learning_rate"] == "0.005"


def test_the_environment_is_put_back_after_the_run(tracked):
    _, _, before = tracked
    assert {var: os.environ.get(var) for var in MLFLOW_VARS} == before


def test_use_mlflow_without_a_uri_writes_to_a_mlruns_folder_not_mlflow_3s_sqlite_default(monkeypatch):
    # MLflow 3's default (sqlite:///mlflow.db) needs a database library mlflow-skinny lacks: a traceback mid-run
    from ftcore.plugins.trackers import environment
    from ftcore.testing import load_recipe

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = environment(load_recipe({**BASE, "use_mlflow": True}))
    assert env["MLFLOW_TRACKING_URI"] == "mlruns" and env["MLFLOW_ALLOW_FILE_STORE"] == "true"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # the user's own: left alone
    assert "MLFLOW_TRACKING_URI" not in environment(load_recipe({**BASE, "use_mlflow": True}))
