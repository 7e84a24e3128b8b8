"""``ftcore report RUN_DIR``: write a run folder's ``report.html`` and model card ``README.md`` again.

A run writes both at its end; run this after ``ftcore eval RUN_DIR --baseline`` to add the comparison
with the base model, or on a run folder written by an older ftcore. Only the folder's own files are
read (see ``ftcore.report``); no model is loaded.
"""

from pathlib import Path

from ftcore.errors import FtcoreError

NAME = "report"
HELP = "write a run folder's report.html and model card (README.md) again from its files"
TAKES_RECIPE = False


def configure(parser):
    parser.add_argument("run_dir", help="the run folder (a recipe's output_dir)")


def handle(args) -> int:
    from ftcore.report import CARD, REPORT, write_model_card, write_report

    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise FtcoreError(f"run_dir: no such folder: {folder}")
    if write_report(folder) is None:
        raise FtcoreError(f"run_dir: {folder} is not an ftcore run folder (no run.json, recipe.yaml or "
                          "metrics.jsonl in it)")
    write_model_card(folder)
    print(f"wrote {folder / REPORT}")
    print(f"wrote {folder / CARD}")
    return 0
