"""A fresh interpreter for what a test must see from outside its own process: which
modules an import or a call loads (``sys.modules`` of this process already holds
everything the suite imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_probe(code: str, env: dict | None = None) -> str:
    """The standard output of ``python -c code`` run from the checkout's root, with the
    checkout first on ``PYTHONPATH`` (and ``env`` added), stripped; raises when it fails."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}))
    if proc.returncode:
        raise AssertionError(f"probe exited with {proc.returncode}:\n{proc.stderr}")
    return proc.stdout.strip()
