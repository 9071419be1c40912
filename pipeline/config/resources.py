"""Where templates, pools, schemas and recipes live.

Installed (``pip install .``): ``pipeline/_resources/<kind>`` (``setup.py``
maps the repository's top-level folders there).  Source checkout or editable
install: the repository's top-level ``<kind>/`` folders.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("templates", "distractor_pools", "schemas", "recipes")


def resource_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"resource kind must be one of {KINDS}, got {kind!r}")
    package = Path(__file__).resolve().parent.parent
    installed = package / "_resources" / kind
    if installed.is_dir():
        return installed
    return package.parent / kind


def resource_path(kind: str, *parts: str) -> Path:
    return resource_dir(kind).joinpath(*parts)
