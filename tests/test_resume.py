"""Checkpoints you can trust and resuming from them (core/checkpoints.py): unit tests, no training."""

import json
from types import SimpleNamespace

import pytest
import yaml

from ftcore import checkpoints
from ftcore.checkpoints import ResumeError


def _checkpoint(root, step, complete=True, recipe=None, weights="adapter_model.safetensors"):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights:
        (folder / weights).write_bytes(b"x")
    if recipe is not None:
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


class FakeRecipe(SimpleNamespace):
    def to_yaml_dict(self, used_plugins=None):
        return {k: v for k, v in vars(self).items() if k not in ("allow_pickle",)}


def test_newest_complete_checkpoint_is_chosen_and_partial_ones_ignored(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)  # a kill during a save (old layout)
    (tmp_path / ".partial-checkpoint-14").mkdir()
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
    for wanted in ("auto", True, "true"):
        assert checkpoints.resolve(FakeRecipe(resume_from_checkpoint=wanted), tmp_path).endswith("checkpoint-10")
    checkpoints.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-2"]
    assert checkpoints.step_of(tmp_path / "checkpoint-10") == 10


def test_auto_without_checkpoint_starts_fresh_true_refuses(tmp_path):
    assert checkpoints.resolve(FakeRecipe(resume_from_checkpoint="auto"), tmp_path) is None
    assert checkpoints.resolve(FakeRecipe(resume_from_checkpoint=None), tmp_path) is None
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        checkpoints.resolve(FakeRecipe(resume_from_checkpoint=True), tmp_path)
    partial = _checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        checkpoints.resolve(FakeRecipe(resume_from_checkpoint=str(partial)), tmp_path)


def test_checkpoint_of_another_recipe_is_refused_naming_the_keys(tmp_path):
    before = {"learning_rate": 1e-4, "seed": 1, "logging_steps": 1, "output_dir": "a"}
    folder = _checkpoint(tmp_path, 2, recipe=before)
    same = FakeRecipe(**{**before, "logging_steps": 5, "output_dir": "b"})  # may change on resume
    checkpoints.check_same_recipe(same, str(folder))
    other = FakeRecipe(**{**before, "learning_rate": 2e-4, "seed": 3})
    with pytest.raises(ResumeError) as info:
        checkpoints.check_same_recipe(other, str(folder))
    assert "learning_rate" in str(info.value) and "seed" in str(info.value)
    assert "logging_steps" not in str(info.value).split("(keys that may change")[0]
    assert ResumeError("x").exit_code == 2


def test_pickle_only_checkpoint_refused_unless_allowed(tmp_path):
    folder = _checkpoint(tmp_path, 2, weights="adapter_model.bin")
    (folder / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(ResumeError, match="adapter_model.bin"):
        checkpoints.check_no_pickle(str(folder), allow_pickle=False)
    checkpoints.check_no_pickle(str(folder), allow_pickle=True)
    checkpoints.check_no_pickle(str(_checkpoint(tmp_path, 4)), allow_pickle=False)


def test_trim_metrics_drops_steps_after_the_checkpoint(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)] + ['{"step": 6, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    checkpoints.trim_metrics(tmp_path, 3)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_changed_data_files_are_named(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"data": {"files": [
        {"path": "a.jsonl", "sha256": "1"}, {"path": "b.jsonl", "sha256": "2"}]}}))
    sources = [SimpleNamespace(path="a.jsonl", sha256="1"), SimpleNamespace(path="b.jsonl", sha256="9"),
               SimpleNamespace(path="c.jsonl", sha256="3")]
    assert checkpoints.data_changes(tmp_path, sources) == ["b.jsonl"]
    assert checkpoints.data_changes(tmp_path / "missing", sources) == []
