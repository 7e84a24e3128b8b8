"""report.html and the model card (README.md): made from a run folder's files, readable by a person.

Most tests build a run folder from synthetic files (no training) and read the pages back; one
module-scoped tiny run checks that a real run writes both, that the report renders in a headless
chromium with its charts visible, and that the model card's loading code runs with plain peft.
"""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from ftcore import hookimpl
from ftcore.report import COLOURS, write_model_card, write_report

CHROMIUM = Path("/usr/bin/chromium")
XSS = "<script>alert('pwned')</script> Reverse the words: red cat"

TRAIN = [(step, 3.0 - 0.2 * step + (0.05 if step % 3 == 0 else 0.0), 1e-3 * (1 - step / 12)) for step in range(1, 11)]
EVALS = [(0, 2.5, 0.0), (5, 1.75, 0.5), (10, 1.25, 0.875)]  # step, eval_loss, eval_exact_match


def synthetic_run(folder: Path, *, adapter=True, evaluation=True, samples=True) -> Path:
    """A run folder as a run and `ftcore eval --baseline` leave it, with made-up numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for step, loss, em in EVALS:
        records.append({"step": step, "epoch": step / 10, "eval_loss": loss, "eval_exact_match": em,
                        "eval_tokens": 120.0})
    for step, loss, lr in TRAIN:
        records.append({"step": step, "epoch": step / 10, "loss": loss, "grad_norm": 1.0, "learning_rate": lr})
    records.sort(key=lambda r: r["step"])
    records.append({"step": 10, "epoch": 1.0, "train_runtime": 12.5, "train_loss": 2.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    first, last = EVALS[0], EVALS[-1]
    run = {
        "status": "completed", "started": "2026-01-02T10:00:00+0000", "finished": "2026-01-02T10:02:05+0000",
        "base_model": "acme/base-7b", "adapter": "lora" if adapter else None,
        "versions": {"ftcore": "0.1.0", "torch": "2.13.0"},
        "plugins": [{"name": "lora", "module": "ftcore.plugins.lora", "package": "ftcore", "version": "0.1.0",
                     "source": "builtin"}],
        "data": {"files": [{"path": "data/<rows>.jsonl", "sha256": "ab" * 32, "revision": None, "rows": 40}],
                 "train": {"rows_read": 40, "rows_kept": 38, "rows_dropped": {"too long": 2}, "tokens": 5000,
                           "trained_tokens": 1200},
                 "train_examples": 30, "eval_examples": 8},
        "hardware": {"platform": "Linux", "python": "3.11", "cpu_count": 2, "cuda": False, "gpus": []},
        "precision": "fp32", "world_size": 1,
        "metrics": {"train_loss_first": TRAIN[0][1], "train_loss_last": TRAIN[-1][1],
                    "eval_loss_final": last[1], "eval_exact_match_final": last[2], "eval_tokens_final": 120.0,
                    "eval_loss_initial": first[1], "eval_exact_match_initial": first[2],
                    "eval_tokens_initial": 120.0, "train_runtime": 12.5},
    }
    (folder / "run.json").write_text(json.dumps(run))
    recipe = {"base_model": "acme/base-7b", "adapter": "lora" if adapter else None,
              "datasets": [{"path": "data/<rows>.jsonl", "type": "alpaca"}], "sequence_len": 256,
              "micro_batch_size": 4, "gradient_accumulation_steps": 2, "num_epochs": 1.0, "max_steps": 10,
              "learning_rate": 1e-3, "lr_scheduler": "linear", "seed": 7}
    (folder / "recipe.yaml").write_text("# Resolved by ftcore: a <comment> & more\n" + yaml.safe_dump(recipe, sort_keys=False))
    if adapter:
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
             "base_model_name_or_path": "acme/base-7b", "use_dora": False, "task_type": "CAUSAL_LM"}))
    else:
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    if samples:
        rows = [(XSS, "cat red", "red red red", "cat red", 0.0, 1.0),
                ("Reverse the words: sun blue", "blue sun", "sun sun", "blue sun", 0.0, 1.0),
                ("Reverse the words: one two", "two one", "one", "one two", 0.0, 0.0)]
        lines = []
        for phase, step, column, score in (("initial", 0, 2, 4), ("training", 5, 2, 4), ("final", 10, 3, 5)):
            for row in rows:
                lines.append({"evaluator": "generation", "step": step, "phase": phase, "prompt": row[0],
                              "reference": row[1], "prediction": row[column], "exact_match": row[score]})
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if evaluation:
        (folder / "eval.json").write_text(json.dumps({
            "run_dir": str(folder), "evaluated": "2026-01-02T11:00:00", "evaluators": ["loss", "generation"],
            "split": "validation", "examples": 8,
            "models": {"fine_tuned": {"model": str(folder), "metrics": {"eval_loss": 1.2, "eval_exact_match": 0.75}},
                       "base": {"model": "acme/base-7b", "metrics": {"eval_loss": 2.6, "eval_exact_match": 0.125}}},
            "difference": {"eval_loss": 1.2 - 2.6},  # exact_match's is left for the report to compute
            "samples": [{"model": "base", "evaluator": "generation", "prompt": XSS, "reference": "cat red",
                         "prediction": "BASE-SAYS-red", "exact_match": 0.0},
                        {"model": "fine_tuned", "evaluator": "generation", "prompt": XSS, "reference": "cat red",
                         "prediction": "TUNED-SAYS-cat red", "exact_match": 1.0}]}))
    return folder


class Tables(HTMLParser):
    """Every <table>'s rows as lists of cell texts, and the sample cards' texts in order."""

    def __init__(self):
        super().__init__()
        self.tables, self.row, self.cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None:
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr" and self.tables:
            self.tables[-1].append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def tables(text):
    parser = Tables()
    parser.feed(text)
    return {tuple(t[0]): {row[0]: row[1:] for row in t[1:]} for t in parser.tables if t}


def value(cell: str) -> float:
    return float(cell.replace("−", "-").replace(",", "").replace("+", ""))


def line_points(page: str, gid: str) -> list[tuple[float, float]]:
    """The (x, y) vertices of the SVG line matplotlib drew with this gid."""
    group = re.search(rf'<g id="{gid}">\s*<path d="([^"]+)"', page)
    assert group, f"no line {gid} in the report"
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", group.group(1))]
    return list(zip(numbers[::2], numbers[1::2]))


def assert_plots(points, data):
    """Pixel coordinates are one affine map of the data: the line shows these values, in this order."""
    import numpy as np

    px, py = np.array(points).T
    x, y = np.array(data, dtype=float).T
    for pixels, values in ((px, x), (py, y)):
        slope, intercept = np.polyfit(values, pixels, 1)
        assert np.abs(slope * values + intercept - pixels).max() < 0.05, (pixels, values)


# ── report.html from synthetic files ─────────────────────────────────────────


def test_report_draws_train_eval_and_learning_rate_curves_with_every_point(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    assert write_report(folder) == "report.html"
    page = (folder / "report.html").read_text()
    assert page.count("<svg") >= 3
    train = line_points(page, "train-loss")
    assert len(train) == len(TRAIN)
    assert_plots(train, [(s, loss) for s, loss, _ in TRAIN])
    assert len(line_points(page, "eval-loss")) == len(EVALS)
    assert_plots(line_points(page, "eval-loss"), [(s, loss) for s, loss, _ in EVALS])
    assert_plots(line_points(page, "learning-rate"), [(s, lr) for s, _, lr in TRAIN])
    assert_plots(line_points(page, "eval-exact_match"), [(s, em) for s, _, em in EVALS])
    assert COLOURS["train"] in page and COLOURS["learning_rate"] in page


def test_report_is_self_contained_and_escapes_user_content(tmp_path):
    page_file = tmp_path / "run" / "report.html"
    write_report(synthetic_run(tmp_path / "run"))
    page = page_file.read_text()
    assert "<script" not in page.lower()  # none of ours, and the prompt's is escaped
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "data/&lt;rows&gt;.jsonl" in page and "a &lt;comment&gt; &amp; more" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)  # nothing fetched
    assert not re.search(r"@import|url\(\s*['\"]?https?:|<link\b|<img\b", page, re.I)
    assert not list(page_file.parent.glob("*.tmp"))


def test_report_tables_before_after_and_against_the_base(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    write_report(folder)
    found = tables((folder / "report.html").read_text())
    before_after = found[("metric", "before training", "after training", "change")]
    (_, first_loss, first_em), (_, last_loss, last_em) = EVALS[0][0:3], EVALS[-1][0:3]
    for metric, before, after in (("loss", first_loss, last_loss), ("exact_match", first_em, last_em)):
        cells = [value(c) for c in before_after[metric]]
        assert cells == pytest.approx([before, after, after - before], rel=1e-3)
    assert "tokens" in before_after
    base = found[("metric", "base", "fine-tuned", "difference")]
    assert [value(c) for c in base["loss"]] == pytest.approx([2.6, 1.2, 1.2 - 2.6], rel=1e-3)
    assert [value(c) for c in base["exact_match"]] == pytest.approx([0.125, 0.75, 0.75 - 0.125], rel=1e-3)
    page = (folder / "report.html").read_text()
    assert re.search(r'<td class="num better">−1\.4</td>', page)  # a lower loss is better
    assert re.search(r'<td class="num better">\+0\.625</td>', page)  # a higher exact match too


def test_report_shows_samples_before_after_and_base_next_to_their_references(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    write_report(folder)
    page = (folder / "report.html").read_text()
    section = page[page.index('id="samples"'):page.index('id="data"')]
    cards = section.split('<div class="sample">')[1:]
    assert len(cards) == 3 + 1  # three prompts before/after, one from eval.json
    first = cards[0]
    positions = [first.index(text) for text in ("&lt;script&gt;", "cat red", "red red red", "exact_match 0",
                                                 "after training", "exact_match 1")]
    assert positions == sorted(positions)  # prompt, reference, before (and its score), after (and its score)
    assert "sun sun" in cards[1] and "blue sun" in cards[1]
    assert "BASE-SAYS-red" in cards[3] and "TUNED-SAYS-cat red" in cards[3]
    assert cards[3].index("BASE-SAYS") < cards[3].index("TUNED-SAYS")


def test_report_and_card_with_files_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_report(empty) is None and write_model_card(empty) is None
    assert not list(empty.iterdir())

    only_metrics = tmp_path / "metrics-only"
    only_metrics.mkdir()
    shutil.copy(synthetic_run(tmp_path / "full") / "metrics.jsonl", only_metrics)
    with (only_metrics / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "loss": 0.5')  # an interrupted run's half line
    assert write_report(only_metrics) == "report.html"
    page = (only_metrics / "report.html").read_text()
    assert len(line_points(page, "train-loss")) == len(TRAIN)
    found = tables(page)[("metric", "before training", "after training", "change")]  # from metrics.jsonl alone
    assert value(found["loss"][1]) == pytest.approx(EVALS[-1][1])

    starting = synthetic_run(tmp_path / "starting", evaluation=False, samples=False)
    (starting / "metrics.jsonl").unlink()
    run = json.loads((starting / "run.json").read_text())
    (starting / "run.json").write_text(json.dumps({**run, "status": "running", "finished": None, "metrics": {}}))
    assert write_report(starting) and write_model_card(starting)
    page = (starting / "report.html").read_text()
    assert "running" in page and "<svg" not in page and 'id="samples"' not in page


# ── the model card from synthetic files ──────────────────────────────────────


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_says_what_was_trained(tmp_path):
    folder = synthetic_run(tmp_path / "run")
    (folder / "README.md").write_text("[More Information Needed]\n")  # peft's card, written by save_model
    assert write_model_card(folder) == "README.md"
    card = (folder / "README.md").read_text()
    assert "More Information Needed" not in card
    meta = front_matter(card)
    assert meta["base_model"] == "acme/base-7b" and meta["library_name"] == "peft"
    assert "ftcore" in meta["tags"] and "lora" in meta["tags"]
    assert "ab" * 32 in card and "| 40 |" in card  # the data file's hash and rows
    assert re.search(r"\| r \| 8 \|", card) and re.search(r"\| lora_alpha \| 16 \|", card)
    assert "q_proj, v_proj" in card
    assert re.search(r"\| learning rate \| 0\.001 \|", card) and re.search(r"\| sequence len \| 256 \|", card)
    assert re.search(r"\| batch \| 8 = 4 per device × 2 accumulation", card)
    row = re.search(r"^\| exact_match \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", card, re.M).groups()
    assert [value(c) for c in row] == pytest.approx([EVALS[0][2], EVALS[-1][2], EVALS[-1][2] - EVALS[0][2]])
    base = re.search(r"^\| loss \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", card.split("Against the base")[1], re.M)
    assert [value(c) for c in base.groups()] == pytest.approx([2.6, 1.2, -1.4], rel=1e-3)
    recipe = re.search(r"```yaml\n(.*?)\n```", card, re.S).group(1)
    assert yaml.safe_load(recipe) == yaml.safe_load((folder / "recipe.yaml").read_text())
    code = re.search(r"```python\n(.*?)\n```", card, re.S).group(1)
    assert "AutoPeftModelForCausalLM.from_pretrained(run_dir)" in code
    assert f"ftcore chat {folder}" in card and f"ftcore generate {folder}" in card


def test_model_card_of_a_full_run_and_of_a_vision_model(tmp_path):
    full = synthetic_run(tmp_path / "full", adapter=False, evaluation=False)
    write_model_card(full)
    card = (full / "README.md").read_text()
    assert front_matter(card)["library_name"] == "transformers"
    code = re.search(r"```python\n(.*?)\n```", card, re.S).group(1)
    assert "AutoModelForCausalLM.from_pretrained(run_dir" in code and "peft" not in code

    vision = synthetic_run(tmp_path / "vision", adapter=False, evaluation=False)
    (vision / "config.json").write_text(json.dumps({"architectures": ["MllamaForConditionalGeneration"],
                                                    "model_type": "mllama"}))
    (vision / "processor_config.json").write_text("{}")
    write_model_card(vision)
    card = (vision / "README.md").read_text()
    assert front_matter(card)["pipeline_tag"] == "image-text-to-text"
    code = re.search(r"```python\n(.*?)\n```", card, re.S).group(1)
    assert "MllamaForConditionalGeneration.from_pretrained(run_dir)" in code
    assert "AutoProcessor.from_pretrained(run_dir)" in code

    adapter = synthetic_run(tmp_path / "vision-adapter", evaluation=False)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["MllamaForConditionalGeneration"]}))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    run = json.loads((adapter / "run.json").read_text())
    (adapter / "run.json").write_text(json.dumps({**run, "base_model": str(base)}))
    write_model_card(adapter)
    code = re.search(r"```python\n(.*?)\n```", (adapter / "README.md").read_text(), re.S).group(1)
    assert f"MllamaForConditionalGeneration.from_pretrained({json.dumps(str(base))})" in code
    assert "PeftModel.from_pretrained(base, run_dir)" in code


def test_a_page_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, monkeypatch, caplog):
    import ftcore.report

    folder = synthetic_run(tmp_path / "run")
    monkeypatch.setattr(ftcore.report, "report_html", lambda folder: 1 / 0)
    assert ftcore.report.write_pages(folder) == ["README.md"]
    assert "could not write report.html" in caplog.text and "ZeroDivisionError" in caplog.text
    assert not (folder / "report.html").exists()


def test_ftcore_report_writes_both_again(tmp_path, capsys):
    from ftcore.cli import main as cli

    folder = synthetic_run(tmp_path / "run")
    assert cli(["report", str(folder)]) == 0
    assert (folder / "report.html").is_file() and (folder / "README.md").is_file()
    assert str(folder / "report.html") in capsys.readouterr().out
    assert cli(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert cli(["report", str(tmp_path / "plain")]) == 2
    assert "not an ftcore run folder" in capsys.readouterr().err


# ── a real tiny run, in a real browser ───────────────────────────────────────


def probe(ctx):
    """An evaluator recording what the model predicts for one validation example's first tokens."""
    import torch

    ids = torch.tensor([ctx.dataset[0]["input_ids"][:12]], device=ctx.device)
    prediction = ctx.tokenizer.decode(ctx.model(input_ids=ids).logits[0].argmax(-1))
    ctx.record(prompt="<b>probe</b> " + ctx.tokenizer.decode(ids[0]), reference="the reference",
               prediction=prediction, agrees=float(prediction == "the reference"))
    return {"probe_step": ctx.step}


class ProbePlugin:
    @hookimpl
    def register_evaluators(self, register):
        register("probe", probe)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ftcore_tiny_llama):
    from ftcore.testing import alpaca_rows, fresh_plugins, run_recipe, write_jsonl

    folder = tmp_path_factory.mktemp("report")
    data = write_jsonl(folder / "alpaca.jsonl", alpaca_rows(24))
    return run_recipe({"evaluators": ["loss", "probe"], "base_model": str(ftcore_tiny_llama), "datasets": [{"path": str(data), "type": "alpaca"}],
                       "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True,
                       "val_set_size": 0.25, "sequence_len": 256, "micro_batch_size": 4, "max_steps": 6,
                       "learning_rate": 5e-3, "eval_on_start": True, "eval_steps": 3, "logging_steps": 1},
                      plugins=fresh_plugins(("probe", ProbePlugin())), output_dir=folder / "out")


def colour_pixels(image, hex_colour: str, tolerance: int = 24):
    """The (x, y) of pixels within ``tolerance`` of ``hex_colour`` on every channel."""
    import numpy as np

    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((np.abs(pixels - target) <= tolerance).all(axis=2))
    return xs, ys


def test_a_run_writes_a_report_that_renders_in_chromium_with_its_charts(tiny_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium) to render report.html")
    from PIL import Image

    page = tiny_run.output_dir / "report.html"
    assert page.is_file()
    train_logs = [r for r in tiny_run.records if "loss" in r]
    text = page.read_text()
    assert len(line_points(text, "train-loss")) == len(train_logs)
    assert "&lt;b&gt;probe&lt;/b&gt;" in text and "the reference" in text  # samples.jsonl, through the core
    screenshot = tmp_path / "report.png"
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,2400",
         page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), done.stderr[-2000:]
    image = Image.open(screenshot)
    assert image.size == (1200, 2400)
    for name in ("train", "eval", "learning_rate"):
        xs, ys = colour_pixels(image, COLOURS[name])
        assert len(xs) > 150, f"the {name} curve is not visible in the screenshot"
        assert xs.max() - xs.min() > 250, f"the {name} curve does not span its chart"
        assert ys.max() < 1000, f"the {name} curve is not near the top of the page"
    shutil.copy(screenshot, tiny_run.output_dir / "report-screenshot.png")  # for a person to look at


def test_a_run_writes_a_model_card_whose_code_loads_it_with_plain_peft(tiny_run, capsys):
    card = (tiny_run.output_dir / "README.md").read_text()
    assert "More Information Needed" not in card  # peft's card was replaced
    assert front_matter(card)["base_model"] == tiny_run.recipe.base_model
    files = json.loads((tiny_run.output_dir / "run.json").read_text())["data"]["files"]
    assert files[0]["sha256"] in card
    code = re.search(r"```python\n(.*?)\n```", card, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # loads the adapter over its base and generates
    import torch

    model = scope["model"]
    assert type(model).__name__ == "PeftModelForCausalLM"
    ids = torch.tensor([scope["tokenizer"]("Reverse the words: red cat")["input_ids"]])
    tiny_run.model.eval()
    with torch.no_grad():  # the trained adapter itself, not a fresh one
        torch.testing.assert_close(model(input_ids=ids).logits, tiny_run.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert scope["output"].shape[1] > scope["inputs"]["input_ids"].shape[1]  # and it generated
