"""``ftcore run RECIPE [key=value ...] [--overwrite]``: train."""

NAME = "run"
HELP = "train as a recipe says"
TAKES_RECIPE = True


def configure(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir (refused by default)")


def handle(args) -> int:
    from pathlib import Path

    from ftcore.artifacts import check_output_dir
    from ftcore.cli import load_recipe
    from ftcore.cli.validate import path_problems, print_notes
    from ftcore.errors import RecipeError

    recipe, raw, skipped = load_recipe(args)
    check_output_dir(Path(recipe.output_dir), args.overwrite, resume=recipe.resume_from_checkpoint)
    problems = path_problems(recipe)
    if problems:
        raise RecipeError(problems, source=raw.source)
    print_notes(recipe, skipped)
    from ftcore.run import run  # torch and transformers load from here on

    run(recipe, args.plugins, overwrite=args.overwrite)
    return 0
