"""``ftcore run RECIPE [key=value ...] [--overwrite]``: train."""

NAME = "run"
HELP = "train as a recipe says"
TAKES_RECIPE = True


def configure(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir (refused by default)")


def handle(args) -> int:
    from ftcore.cli import load_recipe
    from ftcore.cli.validate import print_notes

    recipe, raw, skipped = load_recipe(args)
    print_notes(recipe, skipped)
    from ftcore.run import run  # torch and transformers load from here on

    run(recipe, args.plugins, overwrite=args.overwrite)
    return 0
