"""``python -m ftcore``.

Python puts the current folder first on ``sys.path`` for ``-m``: any ``.py`` there (a stray
``yaml.py``, ``torch.py``, ``transformers.py``) would be imported in place of the real module.
It is taken off; a module a recipe names explicitly (``plugins:``, a dotted ``type:``) is still
found in the current folder (``ftcore.plugins_manager.named_module_path``).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    os.environ["FTCORE_MODULE_FOLDER"] = os.path.abspath(sys.path.pop(0) or ".")

from ftcore.cli import main  # noqa: E402

sys.exit(main())
