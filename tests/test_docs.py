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
