"""`python -m launcher` runs the `streamrec` command."""

import os

from launcher.cli import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app()
