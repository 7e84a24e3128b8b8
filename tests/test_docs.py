"""The documentation stays true to the code."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_recipe_key_reference_matches_the_schema():
    done = subprocess.run([sys.executable, str(REPO / "docs" / "gen_recipe_keys.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_doc_page_linked_from_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    for page in ("index", "recipes", "data", "runs", "plugins", "hooks", "cli"):
        assert f"docs/{page}.md" in readme
        assert (REPO / "docs" / f"{page}.md").is_file()


def _hook_specs():
    import inspect

    from ftcore import hookspecs

    for name, fn in vars(hookspecs).items():
        if hasattr(fn, "ftcore_spec"):
            params = list(inspect.signature(fn).parameters)
            kind = "firstresult" if fn.ftcore_spec["firstresult"] else "register" if "register" in params else "all"
            yield name, kind, params, inspect.getdoc(fn).split("\n")[0].replace("``", "`")


def test_docs_hooks_md_matches_the_specs_hook_for_hook():
    """docs/hooks.md's reference: every spec, in declaration order, with its kind, parameters and summary."""
    import re

    page = (REPO / "docs" / "hooks.md").read_text()
    reference = page.split("## Reference", 1)[1].split("\n## ", 1)[0]
    entries = re.findall(r"^### `(\w+)`\n\n(.+)\n\n- kind: (\w+)\n- parameters: (.*)$", reference, re.M)
    specs = list(_hook_specs())
    assert [e[0] for e in entries] == [s[0] for s in specs], "hooks.md lists other hooks, or in another order"
    for (name, summary, kind, params), (_, spec_kind, spec_params, spec_summary) in zip(entries, specs):
        assert kind == spec_kind, name
        assert re.findall(r"`(\w+)`", params) == spec_params, name
        assert summary == spec_summary, name


def test_the_timeline_in_hooks_md_is_the_one_in_hookspecs():
    from ftcore import hookspecs

    declared = hookspecs.__doc__.split("When the hooks fire", 1)[1].split("::\n\n", 1)[1].split("\n\n", 1)[0]
    page = (REPO / "docs" / "hooks.md").read_text()
    drawn = page.split("## When each hook fires", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    assert [line[4:] for line in declared.splitlines()] == drawn.rstrip("\n").splitlines()
