"""First import of every tool: `python tools/<tool>.py` starts with only tools/ on sys.path, so put the
repo root there, then set up the process as the root scripts do (utils.env)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import utils.env  # noqa: E402,F401
