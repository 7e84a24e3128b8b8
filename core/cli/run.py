"""``ftcore run RECIPE [key=value ...] [--overwrite] [--dry-run]``: train (or rehearse, with --dry-run)."""

NAME = "run"
HELP = "train as a recipe says"
TAKES_RECIPE = True


def configure(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir (refused by default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in output_dir "
                             "(same as resume_from_checkpoint=auto)")
    rehearse = parser.add_argument_group("dry run (a plugin's: the built-in planning plugin)")
    rehearse.add_argument("--dry-run", action="store_true",
                          help="rehearse on this CPU instead: a tiny model of the same architecture, a sample of the "
                               "data, a few steps through the real pipeline, then what the real run would do; "
                               "output_dir is not touched")
    rehearse.add_argument("--keep-dry-run", action="store_true",
                          help="with --dry-run: keep its temporary folder (the tiny model, the run) and print where")
    group = parser.add_argument_group("several processes (docs/scaling.md)")
    group.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="training processes on this machine, one per GPU (default 1: no launcher)")
    group.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines taking part (default 1)")
    group.add_argument("--node-rank", type=int, default=0, metavar="I", help="this machine's index, 0 to nnodes-1")
    group.add_argument("--master-addr", metavar="HOST", help="address of the machine with --node-rank 0")
    group.add_argument("--master-port", type=int, metavar="PORT",
                       help="a free port on that machine (default: 29500; a free one on a single machine)")


def handle(args) -> int:
    from pathlib import Path

    from ftcore.artifacts import check_output_dir
    from ftcore.cli import load_recipe
    from ftcore.cli.validate import attention_problems, path_problems, print_notes
    from ftcore.errors import RecipeError

    if getattr(args, "dry_run", False):
        return dry_run(args)
    if args.resume:
        args.overrides = [*args.overrides, "resume_from_checkpoint=auto"]
    recipe, raw, skipped = load_recipe(args)
    if not (args.overwrite or args.resume):  # RUN_DIR/recipe.yaml of a finished run: rerun beside it (docs/recipes.md)
        recipe, raw, skipped = rerun(args, recipe, raw, skipped)
    import os

    # the launching process and rank 0 check the folder; another rank could see rank 0's first files as a stranger's
    first = int(os.environ.get("RANK", "0")) == 0
    if first:
        check_output_dir(Path(recipe.output_dir), args.overwrite, resume=recipe.resume_from_checkpoint)
        from ftcore.checkpoints import check_resumable

        check_resumable(Path(recipe.output_dir), recipe, args.overwrite)  # --resume: not a completed run, not a stranger's
    problems = path_problems(recipe) + attention_problems(recipe)  # flash attention this machine lacks: before data
    if problems:
        raise RecipeError(problems, source=raw.source)
    if first:
        from ftcore.artifacts import preflight

        preflight(Path(recipe.output_dir), recipe, args.overwrite)  # writable, room for the checkpoints: before anything loads
    from ftcore import launch
    from ftcore.artifacts import lock_for_processes, lock_output_dir
    from ftcore.hooks import launch_processes

    plan = launch.Plan(args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port)
    launch.check(plan)
    output_dir = Path(recipe.output_dir)
    with lock_output_dir(output_dir):  # one run per folder, before anything loads; held until the run ends
        if not launch.launched():  # a process a launcher started trains at once; its messages: rank 0 only (ftcore.log)
            print_notes(recipe, skipped)
            with lock_for_processes(output_dir):  # the processes it starts know this one holds the lock
                code = launch_processes(args.plugins, recipe, plan, launch.child_command(args))  # a plugin's launcher
            if code is not None:
                return code
        from ftcore.run import run  # torch and transformers load from here on

        run(recipe, args.plugins, overwrite=args.overwrite)
    return 0


def dry_run(args) -> int:
    """``--dry-run``: a plugin's ``dry_run`` hook rehearses the run in a temporary folder.

    The real ``output_dir`` is never checked, locked or written: ``train(overrides)`` reads the recipe again
    with the plugin's overrides and ``output_dir`` set inside the temporary folder, last. An error of the
    pipeline itself leaves the hook as the run would raise it (not as the plugin's error).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from ftcore.cli import load, load_recipe
    from ftcore.errors import FtcoreError
    from ftcore.hooks import dry_run as rehearse

    if args.resume or args.overwrite or args.nproc != 1 or args.nnodes != 1:
        raise FtcoreError("--dry-run runs alone in this process and never touches output_dir: leave out "
                          "--resume, --overwrite, --nproc and --nnodes")
    recipe, _raw, _skipped = load_recipe(args)
    work = Path(tempfile.mkdtemp(prefix="ftcore-dry-run-"))
    failures = []

    def train(overrides=()):
        from ftcore.run import run  # torch and transformers load from here on

        try:
            again, _raw, _skipped = load(args.recipe, [*args.overrides, *overrides, f"output_dir={work / 'run'}"],
                                         args.plugins)
            return run(again, args.plugins)
        except BaseException as exc:
            failures.append(exc)
            raise

    try:
        return rehearse(args.plugins, recipe, work, train)
    except Exception:
        if failures:  # the pipeline's own error: reported as the real run would report it
            raise failures[-1] from None
        raise
    finally:
        if args.keep_dry_run:
            print(f"dry run kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def rerun(args, recipe, raw, skipped):
    """``ftcore run RUN_DIR/recipe.yaml``: a finished run is never replaced; it reruns into RUN_DIR-rerun[-N]."""
    import json
    import sys

    from ftcore.cli import load_recipe
    from ftcore.recipe.rerun import changed_data, rerun_folder

    target = rerun_folder(raw, recipe.output_dir)
    if target is None:
        return recipe, raw, skipped
    run_dir = raw.path.resolve().parent
    print(f"rerunning the run in {run_dir} into {target} (it stays as it is; set output_dir= to choose the folder)")
    for change in changed_data(recipe, run_dir):
        print(f"warning: the data changed since that run, so the rerun will not reproduce it: {change}",
              file=sys.stderr)
    args.overrides = [*args.overrides, f"output_dir={json.dumps(str(target))}"]
    return load_recipe(args)
