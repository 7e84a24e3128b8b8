"""``ftcore plugins [--json]``: which plugins are loaded, from where, with which hooks."""

import json

NAME = "plugins"
HELP = "list the plugins ftcore found: name, version, package, hooks"
TAKES_RECIPE = False


def configure(parser):
    parser.add_argument("--json", action="store_true", help="print JSON")


def handle(args) -> int:
    from ftcore import CONTRACT_VERSION

    plugins = args.plugins
    rows = [{"name": i.name, "module": i.module, "source": i.source, "package": i.package,
             "version": i.version, "contract": i.contract, "hooks": i.hooks} for i in plugins.info.values()]
    refused = [{"name": i.name, "module": i.module, "source": i.source, "package": i.package,
                "version": i.version, "error": str(error)} for i, error in plugins.refused]
    if args.json:
        print(json.dumps({"contract": CONTRACT_VERSION, "plugins": rows, "disabled": plugins.blocked,
                          "replaced": plugins.replaced, "refused": refused}, indent=2))
        return _report_refused(plugins)
    print(f"hook contract {CONTRACT_VERSION}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        origin = f"{r['package']} {r['version']}" if r["package"] else r["module"]
        print(f"  {r['name']:<{width}}  {r['source']:<11}  {origin}")
        print(f"  {'':<{width}}  hooks: {', '.join(r['hooks'])}")
    for r in refused:
        origin = f"{r['package']} {r['version']}" if r["package"] else r["module"]
        print(f"  {r['name']:<{width}}  {'refused':<11}  {origin}  (see the error below)")
    for short, label in plugins.replaced.items():
        print(f"built-in '{short}' replaced by the installed plugin {label}")
    if plugins.blocked:
        print(f"disabled by FTCORE_DISABLE_PLUGINS: {', '.join(plugins.blocked)}")
    return _report_refused(plugins)


def _report_refused(plugins) -> int:
    """Every plugin that could not load, on stderr; exit 3 so a script sees the installation is broken."""
    import sys

    for _info, error in plugins.refused:
        print(f"error: {error}", file=sys.stderr)
    return 3 if plugins.refused else 0
