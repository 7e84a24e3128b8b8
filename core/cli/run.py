"""``ftcore run RECIPE [key=value ...] [--overwrite]``: train."""

NAME = "run"
HELP = "train as a recipe says"
TAKES_RECIPE = True


def configure(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir (refused by default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in output_dir "
                             "(same as resume_from_checkpoint=auto)")
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
    from ftcore.cli.validate import path_problems, print_notes
    from ftcore.errors import RecipeError

    if args.resume:
        args.overrides = [*args.overrides, "resume_from_checkpoint=auto"]
    recipe, raw, skipped = load_recipe(args)
    import os

    # the launching process and rank 0 check the folder; another rank could see rank 0's first files as a stranger's
    first = int(os.environ.get("RANK", "0")) == 0
    if first:
        check_output_dir(Path(recipe.output_dir), args.overwrite, resume=recipe.resume_from_checkpoint)
        from ftcore.checkpoints import check_resumable

        check_resumable(Path(recipe.output_dir), recipe, args.overwrite)  # --resume: not a completed run, not a stranger's
    problems = path_problems(recipe)
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
