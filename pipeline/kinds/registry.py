"""The corpus kinds a recipe can build (``source.kind`` in the recipe).

=========== ==================================================== =========================
kind        inputs                                               configs
=========== ==================================================== =========================
``slices``  CT/MR volumes with masks (TotalSegmentator,          ``qa``, ``images``,
            multilabel, DICOM layouts)                           ``structures``
``tree``    labelled 2D images ``<modality>/<region>/<label>/``  ``instruct``, ``alignment``,
            (RadImageNet style)                                  ``benchmark``
``volumes`` CT volumes with masks, longitudinal studies          ``qa``, ``volumes``
=========== ==================================================== =========================

Each kind implements :class:`pipeline.kinds.base.Kind`.  Adding one is a new module in
this package (importing :mod:`pipeline.kinds.base`, never this registry) and one entry
in :data:`KINDS`.  A kind's module is imported when the kind is asked for: a build runs
one kind, and the others' modules (their extraction, tables and planning: 6-9 ms each of a
regenerate's start-up, measured) are never imported.
"""

from __future__ import annotations

import importlib

from pipeline.kinds.base import Kind

#: name -> the module whose ``KIND`` it is, the default (a recipe without ``source.kind``) first.
KINDS: dict[str, str] = {"slices": "pipeline.kinds.slices", "tree": "pipeline.kinds.tree",
                         "volumes": "pipeline.kinds.volumes"}
DEFAULT_KIND = "slices"


def kind_name(source_kind: str | None) -> str:
    """The kind of a recipe's ``source.kind`` (default ``slices``)."""
    name = source_kind or DEFAULT_KIND
    if name not in KINDS:
        raise ValueError(f"source.kind: found {source_kind!r}, expected one of {tuple(KINDS)}")
    return name


def get_kind(name: str) -> Kind:
    """The registered kind called ``name``."""
    if name not in KINDS:
        raise ValueError(f"unknown corpus kind {name!r}; known: {tuple(KINDS)}")
    kind = importlib.import_module(KINDS[name]).KIND
    if kind.name != name:
        raise ValueError(f"{KINDS[name]}.KIND is called {kind.name!r}, registered as {name!r}")
    return kind
