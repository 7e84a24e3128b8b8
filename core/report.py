"""A run folder's pages for people: ``report.html`` and the model card ``README.md``.

Both are made from the files the run (and ``ftcore eval``) left in the folder, and from nothing
else: ``run.json``, ``recipe.yaml``, ``metrics.jsonl``, ``samples.jsonl``, ``eval.json``,
``adapter_config.json`` / ``config.json``. Any of them may be missing; what they would have
shown is then left out. A run writes both at its end; ``ftcore report RUN_DIR`` writes them again
(after ``ftcore eval RUN_DIR --baseline``, say, to add the comparison with the base model).

``report.html`` is one self-contained file: inline CSS, the charts as inline SVG (drawn by
matplotlib), no script, nothing fetched from the network. Every string from the run folder is
escaped: prompts and data are user content.
"""

from __future__ import annotations

import html
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ftcore.log import get_logger

log = get_logger(__name__)

REPORT = "report.html"
CARD = "README.md"

#: metrics where lower is better; for the others (accuracy-like) higher is better
LOWER_IS_BETTER = ("loss", "perplexity")
#: bookkeeping numbers an evaluation logs: shown in tables, never judged better or worse, not charted
NEUTRAL = ("tokens", "runtime", "samples_per_second", "steps_per_second", "examples")
#: chart colours (the page's own styles never use them, so a screenshot can find the charts)
COLOURS = {"train": "#2563eb", "eval": "#f97316", "learning_rate": "#059669"}
OTHER_COLOURS = ("#9333ea", "#dc2626", "#0891b2", "#ca8a04")
SAMPLES_SHOWN = 6  # per evaluator
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


# ── reading the run folder ───────────────────────────────────────────────────


@dataclass
class RunFolder:
    """What a run folder holds, each file parsed; ``{}``/``[]``/``""`` for a missing one."""

    path: Path
    run: dict = field(default_factory=dict)
    recipe_text: str = ""
    recipe: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    adapter: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def is_run(self) -> bool:
        return bool(self.run or self.records or self.recipe)

    @property
    def metrics(self) -> dict:
        """run.json's summary metrics; while a run is on (or without run.json), summarized from metrics.jsonl."""
        from ftcore.artifacts import summarize

        return self.run.get("metrics") or summarize(self.records)

    @property
    def base_model(self) -> str:
        return str(self.run.get("base_model") or self.recipe.get("base_model")
                   or self.adapter.get("base_model_name_or_path") or self.config.get("_name_or_path") or "")

    @property
    def method(self) -> str:
        """The adapter's name (``run.json``), else its peft type, else full fine-tuning."""
        name = self.run.get("adapter") or self.recipe.get("adapter") or self.adapter.get("peft_type")
        return str(name) if name else "full fine-tuning"


def read_run(run_dir) -> RunFolder:
    """Parse the run folder's files; a file that is missing or cannot be parsed is left out (with a warning)."""
    path = Path(run_dir)
    folder = RunFolder(path)
    folder.run = _json(path / "run.json")
    folder.evaluation = _json(path / "eval.json")
    folder.adapter = _json(path / "adapter_config.json")
    folder.config = _json(path / "config.json")
    folder.records = _json_lines(path / "metrics.jsonl")
    folder.samples = _json_lines(path / "samples.jsonl")
    recipe = path / "recipe.yaml"
    if recipe.is_file():
        import yaml

        folder.recipe_text = recipe.read_text(encoding="utf-8")
        try:
            folder.recipe = yaml.safe_load(folder.recipe_text) or {}
        except yaml.YAMLError as exc:
            log.warning(f"report: {recipe} is not valid YAML ({exc}); its settings are left out")
        if not isinstance(folder.recipe, dict):
            folder.recipe = {}
    return folder


def _json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        log.warning(f"report: {file} is not valid JSON ({exc}); left out")
        return {}
    return data if isinstance(data, dict) else {}


def _json_lines(file: Path) -> list[dict]:
    if not file.is_file():
        return []
    out = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # an interrupted run can leave half a line
            log.warning(f"report: {file} line {number} is not valid JSON; skipped")
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_pages(run_dir) -> list[str]:
    """Both pages, for the end of a run: a failure is a warning, never an error. Returns the files written."""
    written = []
    for write in (write_report, write_model_card):
        try:
            name = write(run_dir)
        except Exception as exc:  # the model is saved by now; a page that cannot be drawn must not fail the run
            log.warning(f"could not write {REPORT if write is write_report else CARD} in {run_dir}: "
                        f"{type(exc).__name__}: {exc}")
            continue
        if name:
            written.append(name)
    return written


# ── numbers and metrics ──────────────────────────────────────────────────────


def number(value) -> str:
    """A metric for people: integers with separators, others to 4 significant digits."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def signed(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    return "0" if value == 0 else ("+" if value > 0 else "−") + number(abs(value))


def judge(metric: str, change) -> str:
    """``"better"``, ``"worse"`` or ``""`` for a change of ``metric`` (an eval metric's name without eval_)."""
    if not isinstance(change, (int, float)) or change == 0 or any(metric.endswith(n) for n in NEUTRAL):
        return ""
    lower = any(metric.endswith(n) for n in LOWER_IS_BETTER)
    return "better" if (change < 0) == lower else "worse"


def before_after(metrics: dict) -> list[tuple[str, object, object]]:
    """``[(metric, initial, final)]`` from run.json's ``eval_<m>_initial`` / ``eval_<m>_final`` (None where absent)."""
    names = []
    for key in metrics:
        for suffix in ("_final", "_initial"):
            if key.startswith("eval_") and key.endswith(suffix):
                name = key[len("eval_"):-len(suffix)]
                if name not in names:
                    names.append(name)
    return [(n, metrics.get(f"eval_{n}_initial"), metrics.get(f"eval_{n}_final")) for n in names]


def against_base(evaluation: dict) -> list[tuple[str, object, object, object]]:
    """``[(metric, base, fine_tuned, difference)]`` from eval.json; empty without a baseline."""
    models = evaluation.get("models") or {}
    base = (models.get("base") or {}).get("metrics") or {}
    tuned = (models.get("fine_tuned") or {}).get("metrics") or {}
    if not base:
        return []
    difference = evaluation.get("difference") or {}
    rows = []
    for key in dict.fromkeys([*tuned, *base]):
        b, t = base.get(key), tuned.get(key)
        d = difference.get(key)
        if d is None and isinstance(b, (int, float)) and isinstance(t, (int, float)):
            d = t - b
        rows.append((key.removeprefix("eval_"), b, t, d))
    return rows


def fine_tuned_only(evaluation: dict) -> list[tuple[str, object]]:
    tuned = ((evaluation.get("models") or {}).get("fine_tuned") or {}).get("metrics") or {}
    return [(k.removeprefix("eval_"), v) for k, v in tuned.items()]


def _parse_time(value):
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def when(value) -> str:
    """A run.json time for people: ``2026-01-02 10:00:00 +0000``."""
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S %z") if parsed else ("" if value is None else str(value))


def duration(started, finished) -> str:
    """``"2 min 05 s"`` between two run.json times; ``""`` when either is missing."""
    a, b = _parse_time(started), _parse_time(finished)
    if a is None or b is None:
        return ""
    seconds = int((b - a).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def adapter_settings(adapter: dict) -> list[tuple[str, object]]:
    """The settings that say what an adapter is (rank, scaling, dropout, targets), from adapter_config.json."""
    out = []
    for key, value in sorted(adapter.items(), key=lambda kv: kv[0] != "r"):  # the rank first
        wanted = (key == "r" or key.endswith(("_alpha", "_dropout")) or key in ("target_modules", "modules_to_save")
                  or (key.startswith("use_") and value is True))
        if wanted and value not in (None, [], {}, ""):
            out.append((key, ", ".join(sorted(map(str, value))) if isinstance(value, list) else value))
    return out


def training_settings(folder: RunFolder) -> list[tuple[str, str]]:
    """What people ask about a training run, from recipe.yaml (and run.json's precision and world size)."""
    r, run = folder.recipe, folder.run
    rows = []
    steps = max((rec.get("step", 0) for rec in folder.records), default=0)
    if _is_number(r.get("max_steps")) and r["max_steps"] > 0:
        rows.append(("max steps", number(r["max_steps"])))
    elif r.get("num_epochs") is not None:
        rows.append(("epochs", number(r["num_epochs"])))
    if steps and steps != r.get("max_steps"):
        rows.append(("steps trained", number(steps)))
    for key in ("learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "optimizer", "weight_decay"):
        if key == "learning_rate" and key in r or r.get(key) not in (None, 0, 0.0):
            rows.append((key.replace("_", " "), number(r[key])))
    micro, accumulation = r.get("micro_batch_size"), r.get("gradient_accumulation_steps") or 1
    world = run.get("world_size") or 1
    if isinstance(micro, int):
        rows.append(("batch", f"{micro * accumulation * world} = {micro} per device × {accumulation} "
                              f"accumulation × {world} process{'es' if world != 1 else ''}"))
    for key in ("sequence_len", "sample_packing", "seed"):
        if key in r:
            rows.append((key.replace("_", " "), number(r[key]) if not isinstance(r[key], bool) else str(r[key]).lower()))
    if run.get("precision"):
        rows.append(("precision", str(run["precision"])))
    runtime = folder.metrics.get("train_runtime")
    if isinstance(runtime, (int, float)):
        rows.append(("training time", f"{runtime:,.1f} s"))
    return rows


# ── the samples ──────────────────────────────────────────────────────────────


def paired_samples(samples: list[dict]) -> dict[str, list[dict]]:
    """samples.jsonl by evaluator: ``{evaluator: [{prompt, reference, before, after}]}`` with ``before`` the
    record at the initial evaluation and ``after`` the one at the final (else the latest) evaluation."""
    groups: dict[str, dict] = {}
    for record in samples:
        evaluator = str(record.get("evaluator") or "")
        key = (str(record.get("prompt", "")), str(record.get("reference", "")))
        pair = groups.setdefault(evaluator, {}).setdefault(
            key, {"prompt": key[0], "reference": key[1], "before": None, "after": None})
        if record.get("phase") == "initial":
            pair["before"] = record
        elif (record.get("phase") == "final" or pair["after"] is None
              or (pair["after"].get("phase") != "final" and record.get("step", 0) >= pair["after"].get("step", 0))):
            pair["after"] = record
    return {name: list(pairs.values()) for name, pairs in groups.items()}


def paired_eval_samples(evaluation: dict) -> dict[str, list[dict]]:
    """eval.json's samples by evaluator: ``{evaluator: [{prompt, reference, base, fine_tuned}]}``."""
    groups: dict[str, dict] = {}
    for record in evaluation.get("samples") or []:
        if not isinstance(record, dict):
            continue
        key = (str(record.get("prompt", "")), str(record.get("reference", "")))
        pair = groups.setdefault(str(record.get("evaluator") or ""), {}).setdefault(
            key, {"prompt": key[0], "reference": key[1], "base": None, "fine_tuned": None})
        if record.get("model") in ("base", "fine_tuned"):
            pair[record["model"]] = record
    return {name: list(pairs.values()) for name, pairs in groups.items()}


# ── the charts ───────────────────────────────────────────────────────────────


@dataclass
class Series:
    label: str
    points: list  # [(step, value)]
    colour: str
    gid: str  # the SVG group id of the line (tests count its points)
    markers: bool = False


def chart(title: str, ylabel: str, series: list[Series]) -> str:
    """An inline ``<svg>`` of ``series`` against the step, drawn by matplotlib (text as text, no fonts embedded)."""
    import matplotlib
    from matplotlib.figure import Figure

    settings = {"svg.fonttype": "none", "path.simplify": False, "svg.hashsalt": "ftcore", "font.size": 10,
                "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
                "axes.edgecolor": "#94a3b8", "axes.labelcolor": "#334155", "xtick.color": "#475569",
                "ytick.color": "#475569", "axes.titlesize": 11, "axes.titleweight": "bold",
                "axes.titlecolor": "#0f172a"}
    with matplotlib.rc_context(settings):
        fig = Figure(figsize=(5.6, 3.2), dpi=100)
        ax = fig.subplots()
        for s in series:
            xs, ys = zip(*s.points)
            markers = s.markers or len(s.points) < 3
            ax.plot(xs, ys, marker="o" if markers else None, markersize=4 if markers else 0, linewidth=1.8,
                    color=s.colour, label=s.label, gid=s.gid)
        ax.set_title(title, loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(color="#e2e8f0", linewidth=0.8)
        ax.set_axisbelow(True)
        if len(series) > 1:
            ax.legend(frameon=False)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and doctype: it is inlined in HTML
    return svg


def charts(records: list[dict]) -> list[str]:
    """The report's charts: loss (train and eval), learning rate, and each other eval metric evaluated twice or more."""
    out = []
    loss = [Series("train loss", points(records, "loss"), COLOURS["train"], "train-loss"),
            Series("eval loss", points(records, "eval_loss"), COLOURS["eval"], "eval-loss", markers=True)]
    if any(s.points for s in loss):
        out.append(chart("Loss", "loss", [s for s in loss if s.points]))
    lr = points(records, "learning_rate")
    if lr:
        out.append(chart("Learning rate", "learning rate",
                         [Series("learning rate", lr, COLOURS["learning_rate"], "learning-rate")]))
    others = [key for key in dict.fromkeys(k for r in records for k in r)
              if key.startswith("eval_") and not key.endswith((*LOWER_IS_BETTER, *NEUTRAL))]
    for i, key in enumerate(others):
        found = points(records, key)
        if len(found) >= 2:
            name = key.removeprefix("eval_")
            gid = "eval-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)
            label = name.replace("$", r"\$")  # a $ would start matplotlib's mathtext
            out.append(chart(f"eval {label}", label, [Series(f"eval {label}", found,
                                                             OTHER_COLOURS[i % len(OTHER_COLOURS)], gid, markers=True)]))
    return out


def points(records: list[dict], key: str) -> list[tuple]:
    """``[(step, value)]`` of the records that logged ``key`` as a number."""
    return [(r["step"], r[key]) for r in records if _is_number(r.get(key)) and _is_number(r.get("step"))]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ── report.html ──────────────────────────────────────────────────────────────

CSS = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --soft: #f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; background: #f1f5f9; color: var(--ink);
       font: 14px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 20px 48px; }
header, section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
                  margin-bottom: 18px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 18px 0 8px; color: #334155; }
.path, code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.path { color: var(--muted); word-break: break-all; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 12px; font-weight: 600;
         vertical-align: middle; margin-left: 8px; background: #e2e8f0; color: #334155; }
.badge.completed { background: #dcfce7; color: #166534; } .badge.failed { background: #fee2e2; color: #991b1b; }
.badge.interrupted { background: #fef3c7; color: #92400e; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 6px 24px; margin: 14px 0 0; }
.facts div { border-top: 1px solid var(--line); padding-top: 6px; }
.facts dt { color: var(--muted); font-size: 12px; } .facts dd { margin: 0; word-break: break-word; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 12px; }
.charts figure { margin: 0; } .charts svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
table.metrics { width: auto; min-width: 560px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--soft); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { color: #166534; font-weight: 600; } td.worse { color: #b91c1c; font-weight: 600; }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0; }
.sample { border: 1px solid var(--line); border-radius: 8px; margin: 10px 0; overflow: hidden; }
.sample .prompt { background: var(--soft); padding: 8px 12px; border-bottom: 1px solid var(--line); }
.sample .cols { display: grid; grid-template-columns: repeat(3, 1fr); }
.sample .cols > div { padding: 8px 12px; border-left: 1px solid var(--line); min-width: 0; }
.sample .cols > div:first-child { border-left: 0; }
.label { font-size: 11.5px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.score { font-size: 12px; color: #334155; margin-top: 4px; }
pre { margin: 2px 0 0; white-space: pre-wrap; word-break: break-word; }
.sample pre { max-height: 12em; overflow: auto; }
pre.recipe { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
details summary { cursor: pointer; color: #334155; margin: 8px 0; }
.kv { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 2px 24px; }
.kv div { display: flex; justify-content: space-between; gap: 12px; border-bottom: 1px solid var(--line); padding: 3px 0; }
.kv span:first-child { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; text-align: center; }
"""


def e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def write_report(run_dir) -> str | None:
    """``report.html`` in ``run_dir``; returns its name, or None when the folder holds no run's files."""
    folder = read_run(run_dir)
    if not folder.is_run:
        return None
    _write(folder.path / REPORT, report_html(folder))
    return REPORT


def report_html(folder: RunFolder) -> str:
    name = folder.path.resolve().name
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(name)} · ftcore run report</title><style>{CSS}</style></head><body><main>",
        _header(folder, name), _curves(folder), _evaluation(folder), _samples(folder), _data(folder),
        _training(folder), _environment(folder), _recipe(folder),
        f"<footer>Written by ftcore {e(folder.run.get('versions', {}).get('ftcore', ''))} on "
        f"{e(time.strftime('%Y-%m-%d %H:%M'))} from the files in this folder; "
        f"<code>ftcore report {e(folder.path)}</code> writes it again.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _table(headers, rows, numeric=(), css="") -> str:
    """A table; ``rows`` are lists of cells, a cell a string or ``(text, css_class)``; text is escaped here."""
    head = "".join(f'<th class="num">{e(h)}</th>' if i in numeric else f"<th>{e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text, kind = cell if isinstance(cell, tuple) else (cell, "")
            classes = " ".join(c for c in ("num" if i in numeric else "", kind) if c)
            cells.append(f'<td class="{classes}">{e(text)}</td>' if classes else f"<td>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = f'<table class="{css}">' if css else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _header(folder: RunFolder, name: str) -> str:
    run = folder.run
    status = str(run.get("status") or "unknown")
    method = folder.method
    settings = adapter_settings(folder.adapter)
    if settings:
        method += " (" + ", ".join(f"{k} {number(v)}" for k, v in settings if k != "target_modules") + ")"
    facts = [("base model", folder.base_model), ("method", method)]
    targets = dict(settings).get("target_modules")
    if targets:
        facts.append(("adapter on", targets))
    facts += [("started", when(run.get("started"))), ("finished", when(run.get("finished"))),
              ("duration", duration(run.get("started"), run.get("finished")))]
    steps = max((r.get("step", 0) for r in folder.records), default=0)
    if steps:
        facts.append(("steps", number(steps)))
    if run.get("precision"):
        facts.append(("precision", f"{run['precision']}, {run.get('world_size', 1)} process(es)"))
    items = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in facts if v not in ("", None))
    return (f'<header><h1>{e(name)}<span class="badge {e(status)}">{e(status)}</span></h1>'
            f'<div class="path">{e(folder.path.resolve())}</div><dl class="facts">{items}</dl></header>')


def _curves(folder: RunFolder) -> str:
    figures = charts(folder.records)
    if not figures:
        return '<section id="curves"><h2>Training curves</h2><p class="note">metrics.jsonl has no logs yet.</p></section>'
    return ('<section id="curves"><h2>Training curves</h2><div class="charts">'
            + "".join(f"<figure>{svg}</figure>" for svg in figures) + "</div></section>")


def _evaluation(folder: RunFolder) -> str:
    out = ['<section id="evaluation"><h2>Evaluation</h2>']
    rows = before_after(folder.metrics)
    if rows:
        out.append("<h3>Before and after training (validation split)</h3>")
        table = []
        for metric, before, after in rows:
            change = after - before if _is_number(before) and _is_number(after) else None
            table.append([metric, number(before) if before is not None else "—",
                          number(after) if after is not None else "—",
                          (signed(change) if change is not None else "—", judge(metric, change))])
        out.append(_table(["metric", "before training", "after training", "change"], table, numeric=(1, 2, 3), css="metrics"))
    evaluation = folder.evaluation
    if evaluation:
        where = ", ".join(x for x in (
            f"{evaluation.get('split')} split" if evaluation.get("split") else "",
            f"{number(evaluation['examples'])} examples" if evaluation.get("examples") is not None else "",
            f"evaluated {evaluation['evaluated']}" if evaluation.get("evaluated") else "") if x)
        base_rows = against_base(evaluation)
        if base_rows:
            base = (evaluation["models"].get("base") or {}).get("model", "")
            out.append(f"<h3>Against the base model</h3><p class=\"note\">ftcore eval --baseline: {e(where)}; "
                       f"base {e(base)}</p>")
            out.append(_table(["metric", "base", "fine-tuned", "difference"],
                              [[m, number(b), number(t), (signed(d), judge(m, d))] for m, b, t, d in base_rows],
                              numeric=(1, 2, 3), css="metrics"))
        elif fine_tuned_only(evaluation):
            out.append(f"<h3>ftcore eval</h3><p class=\"note\">{e(where)}; run with --baseline to compare with the "
                       f"base model</p>")
            out.append(_table(["metric", "fine-tuned"], [[m, number(v)] for m, v in fine_tuned_only(evaluation)],
                              numeric=(1,), css="metrics"))
    if len(out) == 1:
        out.append('<p class="note">No evaluation: the run had no validation split '
                   '(<code>val_set_size</code>, <code>test_datasets</code>).</p>')
    return "".join(out) + "</section>"


def _sample_html(pair: dict, columns: list[tuple[str, str]]) -> str:
    cells = [f'<div><div class="label">reference</div><pre>{e(pair["reference"])}</pre></div>']
    for label, key in columns:
        record = pair.get(key)
        if record is None:
            cells.append(f'<div><div class="label">{e(label)}</div><p class="note">not generated</p></div>')
            continue
        scores = {k: v for k, v in record.items() if k not in ("step",) and (_is_number(v) or isinstance(v, bool))}
        extra = f"{len(record['images'])} image(s)" if isinstance(record.get("images"), list) else ""
        score = " · ".join([f"{k} {number(v)}" for k, v in scores.items()] + ([extra] if extra else []))
        cells.append(f'<div><div class="label">{e(label)}</div><pre>{e(record.get("prediction", ""))}</pre>'
                     + (f'<div class="score">{e(score)}</div>' if score else "") + "</div>")
    return (f'<div class="sample"><div class="prompt"><div class="label">prompt</div><pre>{e(pair["prompt"])}</pre>'
            f'</div><div class="cols">{"".join(cells)}</div></div>')


def _samples(folder: RunFolder) -> str:
    out = []
    for evaluator, pairs in paired_samples(folder.samples).items():
        out.append(f"<h3>{e(evaluator or 'samples')}: before and after training</h3>")
        out.append(_shown(len(pairs), "samples.jsonl"))
        out += [_sample_html(p, [("before training", "before"), ("after training", "after")])
                for p in pairs[:SAMPLES_SHOWN]]
    for evaluator, pairs in paired_eval_samples(folder.evaluation).items():
        out.append(f"<h3>{e(evaluator or 'samples')}: base and fine-tuned (ftcore eval)</h3>")
        out.append(_shown(len(pairs), "eval.json"))
        out += [_sample_html(p, [("base model", "base"), ("fine-tuned", "fine_tuned")]) for p in pairs[:SAMPLES_SHOWN]]
    if not out:
        return ""
    return '<section id="samples"><h2>Generated samples</h2>' + "".join(out) + "</section>"


def _shown(total: int, source: str) -> str:
    shown = min(total, SAMPLES_SHOWN)
    return f'<p class="note">{shown} of {total} prompt(s) shown; all of them are in {e(source)}.</p>'


def _data(folder: RunFolder) -> str:
    data = folder.run.get("data") or {}
    if not data:
        return ""
    out = ['<section id="data"><h2>Data</h2>']
    files = [f for f in data.get("files") or [] if isinstance(f, dict)]
    if files:
        out.append(_table(["file", "rows", "sha256 (or revision)"],
                          [[f.get("path", ""), number(f.get("rows")), (f.get("sha256") or f.get("revision") or "", "mono")]
                           for f in files], numeric=(1,)))
    splits = {k: v for k, v in data.items() if isinstance(v, dict) and "rows_read" in v}
    if splits:
        rows = []
        for split, s in splits.items():
            dropped = ", ".join(f"{n} {why}" for why, n in (s.get("rows_dropped") or {}).items()) or "none"
            rows.append([split, number(s.get("rows_read")), number(s.get("rows_kept")), dropped,
                         number(s.get("tokens")), number(s.get("trained_tokens"))])
        out.append(_table(["split", "rows read", "kept", "dropped", "tokens", "trained tokens"], rows,
                          numeric=(1, 2, 4, 5)))
    other = {k: v for k, v in data.items() if k != "files" and k not in splits}
    if other:
        out.append('<div class="kv">' + "".join(
            f"<div><span>{e(k.replace('_', ' '))}</span><span>{e(number(v) if not isinstance(v, (dict, list)) else json.dumps(v))}</span></div>"
            for k, v in other.items()) + "</div>")
    return "".join(out) + "</section>"


def _training(folder: RunFolder) -> str:
    settings = training_settings(folder)
    if not settings:
        return ""
    return ('<section id="training"><h2>Training settings</h2><div class="kv">'
            + "".join(f"<div><span>{e(k)}</span><span>{e(v)}</span></div>" for k, v in settings) + "</div></section>")


def _recipe(folder: RunFolder) -> str:
    if not folder.recipe_text:
        return ""
    return ('<section id="recipe"><h2>Recipe</h2><p class="note">recipe.yaml, resolved: every value this run used; '
            f'<code>ftcore run {e(folder.path)}/recipe.yaml</code> runs it again.</p>'
            f'<pre class="recipe">{e(folder.recipe_text)}</pre></section>')


def _environment(folder: RunFolder) -> str:
    run = folder.run
    if not run:
        return ""
    hardware = run.get("hardware") or {}
    facts = {"platform": hardware.get("platform"), "python": hardware.get("python"),
             "CPUs": hardware.get("cpu_count"), "CUDA": "yes" if hardware.get("cuda") else "no",
             "precision": run.get("precision"), "processes": run.get("world_size")}
    for i, gpu in enumerate(hardware.get("gpus") or []):  # {"name", "memory_gib"}
        facts[f"GPU {i}"] = (f"{gpu.get('name', '?')}, {gpu.get('memory_gib', '?')} GiB" if isinstance(gpu, dict)
                             else gpu)
    out = ['<section id="environment"><h2>Environment</h2><div class="kv">']
    out += [f"<div><span>{e(k)}</span><span>{e(v)}</span></div>" for k, v in facts.items() if v not in (None, "")]
    out.append("</div>")
    versions = run.get("versions") or {}
    if versions:
        out.append('<h3>Packages</h3><div class="kv">'
                   + "".join(f"<div><span>{e(k)}</span><span>{e(v)}</span></div>" for k, v in versions.items())
                   + "</div>")
    plugins = [p for p in run.get("plugins") or [] if isinstance(p, dict)]
    if plugins:
        out.append(f"<details><summary>Plugins ({len(plugins)})</summary>")
        out.append(_table(["name", "module", "package", "version", "source"],
                          [[p.get("name"), p.get("module"), p.get("package"), p.get("version"), p.get("source")]
                           for p in plugins]))
        out.append("</details>")
    return "".join(out) + "</section>"


# ── README.md: the model card ────────────────────────────────────────────────


def write_model_card(run_dir) -> str | None:
    """``README.md`` in ``run_dir`` (replacing peft's empty card); its name, or None when the folder holds no run."""
    folder = read_run(run_dir)
    if not folder.is_run:
        return None
    _write(folder.path / CARD, model_card(folder))
    return CARD


def architecture(folder: RunFolder) -> str | None:
    """The model class in ``config.json``'s ``architectures``: the run's own (full fine-tuning), else the base's
    when its config can be read here (a local folder, or the Hugging Face cache; nothing is downloaded)."""
    config = folder.config
    if not config and folder.base_model:
        base = Path(folder.base_model).expanduser()
        if (base / "config.json").is_file():
            config = _json(base / "config.json")
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(folder.base_model, "config.json")
            except Exception:  # not a repo id, say
                cached = None
            if isinstance(cached, str):
                config = _json(Path(cached))
    names = config.get("architectures") or []
    return str(names[0]) if names and isinstance(names, list) else None


def _is_multimodal(folder: RunFolder, cls: str | None) -> bool:
    if any((folder.path / f).is_file() for f in PROCESSOR_FILES):
        return True
    return bool(cls) and not cls.endswith("ForCausalLM") and cls.endswith("ForConditionalGeneration")


def _fence(text: str, language: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _md(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def loading_code(folder: RunFolder, run_dir: str) -> str:
    """Python that loads the run with plain transformers (and peft for an adapter) and generates once."""
    adapter = bool(folder.adapter)
    cls = architecture(folder)
    quantized = bool(folder.recipe.get("load_in_4bit") or folder.recipe.get("load_in_8bit"))
    note = ("# trained on a quantized base (load_in_4bit/load_in_8bit): pass the same quantization_config to\n"
            "# from_pretrained to load it that way; as written it loads unquantized\n") if quantized and adapter else ""
    if _is_multimodal(folder, cls):
        model_cls = cls if cls and cls.endswith("ForConditionalGeneration") else "AutoModelForImageTextToText"
        base = json.dumps(folder.adapter.get("base_model_name_or_path") or folder.base_model)
        load = (f"base = {model_cls}.from_pretrained({base})\n{note}model = PeftModel.from_pretrained(base, run_dir)"
                if adapter else f"model = {model_cls}.from_pretrained(run_dir)")
        return (("from peft import PeftModel\n" if adapter else "")
                + "from PIL import Image\n"
                  f"from transformers import AutoProcessor, {model_cls}\n\n"
                  f"run_dir = {json.dumps(run_dir)}  # this folder, or its Hub id once uploaded\n"
                  "processor = AutoProcessor.from_pretrained(run_dir)  # with the chat template used in training\n"
                  f"{load}\nmodel.eval()\n\n"
                  'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]\n'
                  "text = processor.apply_chat_template(messages, add_generation_prompt=True)\n"
                  'inputs = processor(images=Image.open("image.jpg"), text=text, return_tensors="pt")\n'
                  "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
                  'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')
    if adapter:
        head = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f"run_dir = {json.dumps(run_dir)}  # this folder, or its Hub id once uploaded\n"
                "tokenizer = AutoTokenizer.from_pretrained(run_dir)  # with the chat template used in training\n"
                f"{note}model = AutoPeftModelForCausalLM.from_pretrained(run_dir)  # the base in adapter_config.json, then the adapter\n")
    else:
        head = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"run_dir = {json.dumps(run_dir)}  # this folder, or its Hub id once uploaded\n"
                "tokenizer = AutoTokenizer.from_pretrained(run_dir)  # with the chat template used in training\n"
                'model = AutoModelForCausalLM.from_pretrained(run_dir, dtype="auto")\n')
    if (folder.path / "chat_template.jinja").is_file():
        ask = ('messages = [{"role": "user", "content": "Hello!"}]\n'
               "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
               "                                       return_dict=True)\n")
    else:
        ask = 'inputs = tokenizer("Hello!", return_tensors="pt")\n'
    return (head + "model.eval()\n\n" + ask + "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')


def model_card(folder: RunFolder) -> str:
    import yaml

    run, adapter = folder.run, bool(folder.adapter)
    cls = architecture(folder)
    multimodal = _is_multimodal(folder, cls)
    name = folder.path.resolve().name
    run_dir = str(folder.path)
    method = folder.method
    tags = ["ftcore"] + ([method.lower()] if adapter and method else ["full-fine-tuning"]) + (
        ["peft"] if adapter else []) + ["image-text-to-text" if multimodal else "text-generation"]
    front = {"base_model": folder.base_model or None, "library_name": "peft" if adapter else "transformers",
             "pipeline_tag": "image-text-to-text" if multimodal else "text-generation", "tags": tags}
    front = {k: v for k, v in front.items() if v}
    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", ""]

    what = (f"An adapter ({method}) for `{folder.base_model}`" if adapter
            else f"`{folder.base_model}` fine-tuned in full" if folder.base_model else "A fully fine-tuned model")
    status = run.get("status")
    out.append(f"{what}, trained with ftcore from one YAML recipe"
               + (f" (run {status}" + (f", {run['finished']}" if run.get("finished") else "") + ")." if status else "."))
    out.append("")

    out += ["## Method", ""]
    if adapter:
        settings = adapter_settings(folder.adapter)
        out.append(f"{method} adapter (peft type `{folder.adapter.get('peft_type', '?')}`) on `{folder.base_model}`; "
                   "the base model's weights are unchanged and needed to use it.")
        if settings:
            out += ["", _md_table(["setting", "value"], [[k, number(v)] for k, v in settings])]
        if folder.recipe.get("load_in_4bit") or folder.recipe.get("load_in_8bit"):
            bits = 4 if folder.recipe.get("load_in_4bit") else 8
            out += ["", f"The base was loaded in {bits}-bit for training; the adapter applies to the unquantized "
                        "base as well."]
    else:
        out.append("Full fine-tuning: every weight trained; this folder holds the whole model"
                   + (f" (`{cls}`)." if cls else "."))
    out.append("")

    data = run.get("data") or {}
    files = [f for f in data.get("files") or [] if isinstance(f, dict)]
    if files:
        out += ["## Data", "", _md_table(["file", "rows", "sha256 (or revision)"],
                                         [[f"`{f.get('path', '')}`", number(f.get("rows")),
                                           f"`{f.get('sha256') or f.get('revision') or ''}`"] for f in files])]
        train = data.get("train") or {}
        if train:
            out += ["", f"{number(train.get('rows_kept'))} of {number(train.get('rows_read'))} rows kept, "
                        f"{number(train.get('tokens'))} tokens ({number(train.get('trained_tokens'))} trained); "
                        f"{number(data.get('train_examples'))} training and {number(data.get('eval_examples'))} "
                        "validation examples."]
        out.append("")

    settings = training_settings(folder)
    if settings:
        out += ["## Training", "", _md_table(["setting", "value"], settings), ""]

    rows = before_after(folder.metrics)
    base_rows = against_base(folder.evaluation)
    if rows or base_rows:
        out += ["## Evaluation", ""]
    if rows:
        out += ["On the validation split, before and after training:", "",
                _md_table(["metric", "before training", "after training", "change"],
                          [[m, number(b) if b is not None else "—", number(a) if a is not None else "—",
                            signed(a - b) if _is_number(a) and _is_number(b) else "—"] for m, b, a in rows]), ""]
    if base_rows:
        ev = folder.evaluation
        base = ((ev.get("models") or {}).get("base") or {}).get("model", folder.base_model)
        out += [f"Against the base model `{base}` (`ftcore eval --baseline`, {ev.get('split', '?')} split, "
                f"{number(ev.get('examples'))} examples):", "",
                _md_table(["metric", "base", "fine-tuned", "difference"],
                          [[m, number(b), number(t), signed(d)] for m, b, t, d in base_rows]), ""]

    out += ["## Use", "", "With transformers" + (" and peft" if adapter else "") + " (no ftcore needed):", "",
            _fence(loading_code(folder, run_dir), "python"), ""]
    if adapter and not multimodal:
        base = json.dumps(folder.adapter.get("base_model_name_or_path") or folder.base_model)
        out += ["The base model given explicitly, and the adapter merged into it for a plain transformers model:", "",
                _fence("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                       f"base = AutoModelForCausalLM.from_pretrained({base})\n"
                       f"model = PeftModel.from_pretrained(base, {json.dumps(run_dir)})\n"
                       "merged = model.merge_and_unload()\n", "python"), ""]
    out += ["With ftcore:", "", _fence(
        f"ftcore chat {run_dir}                        # talk to it in the terminal\n"
        f"ftcore generate {run_dir} --prompt \"Hello!\"  # one reply; --file prompts.jsonl for many\n"
        f"ftcore eval {run_dir} --baseline             # compare with the base model on the validation data\n"
        + (f"ftcore merge {run_dir}                       # fold the adapter into the base\n" if adapter else ""),
        "sh"), ""]

    if folder.recipe_text:
        out += ["## Recipe", "", f"The resolved recipe (`recipe.yaml`); `ftcore run {run_dir}/recipe.yaml` trains "
                                 "it again:", "", _fence(folder.recipe_text, "yaml"), ""]
    versions = run.get("versions") or {}
    if versions:
        out += ["## Framework versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(out)
