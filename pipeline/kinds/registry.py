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
in :data:`KINDS`.
"""

from __future__ import annotations

from pipeline.kinds import slices, tree, volumes
from pipeline.kinds.base import Kind

#: name -> kind, the default (a recipe without ``source.kind``) first.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (slices.KIND, tree.KIND, volumes.KIND)}
DEFAULT_KIND = "slices"


def kind_name(source_kind: str | None) -> str:
    """The kind of a recipe's ``source.kind`` (default ``slices``)."""
    name = source_kind or DEFAULT_KIND
    if name not in KINDS:
        raise ValueError(f"source.kind: found {source_kind!r}, expected one of {tuple(KINDS)}")
    return name


def get_kind(name: str) -> Kind:
    """The registered kind called ``name``."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown corpus kind {name!r}; known: {tuple(KINDS)}") from None
