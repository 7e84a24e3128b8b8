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
    if args.json:
        print(json.dumps({"contract": CONTRACT_VERSION, "plugins": rows, "disabled": plugins.blocked}, indent=2))
        return 0
    print(f"hook contract {CONTRACT_VERSION}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        origin = f"{r['package']} {r['version']}" if r["package"] else r["module"]
        print(f"  {r['name']:<{width}}  {r['source']:<11}  {origin}")
        print(f"  {'':<{width}}  hooks: {', '.join(r['hooks'])}")
    if plugins.blocked:
        print(f"disabled by FTCORE_DISABLE_PLUGINS: {', '.join(plugins.blocked)}")
    return 0
