"""Input layouts of a volume case folder, behind one :class:`~pipeline.inputs.layouts.base.Layout`
interface, and their registry.

=============== ============================================================
totalseg        ``ct.nii.gz``, ``mri.nii.gz`` or ``mr.nii.gz`` (also .nii/.nrrd/.mha)
                + ``segmentations/<structure>.nii.gz``
totalseg_ml     ``ct|mri|mr.nii.gz`` + ``segmentations.nii.gz`` (TotalSegmentator
                ``--ml``: one label file, class map in its header or built in)
multilabel      ``image.nii.gz`` + ``labels.nii.gz`` + ``labels.json``
dicom_seg       ``dicom/`` (DICOM files, any names) + DICOM SEG ``*.dcm``
dicom           ``dicom/`` (DICOM files, any names) + ``segmentations/``
=============== ============================================================

:data:`LAYOUTS` is in detection order: the first layout whose ``detect`` accepts a folder's
entries is the folder's layout (a ``dicom/`` folder with SEG files beside it and no
``segmentations/`` is ``dicom_seg``; any other ``dicom/`` folder wins over an image + labels
pair, which wins over a TotalSegmentator ``--ml`` pair, which wins over a ``ct``/``mri``/``mr``
volume with ``segmentations/``).  Adding a layout is one module here (exporting ``LAYOUT``)
and its entry in :data:`LAYOUTS`: the CLI's ``--layout`` choices, the recipe's
``source.layout`` (checked when a recipe is loaded, :mod:`pipeline.config.recipes`) and
discovery all ask :func:`layout_names`.

The labelled 2D tree of the ``tree`` kind (:mod:`pipeline.inputs.layouts.tree`) is a layout of
the whole input, not of a case folder, and is not in this registry.
"""

from __future__ import annotations

from pipeline.inputs.layouts import dicom, dicom_seg, multilabel, totalseg, totalseg_ml
from pipeline.inputs.layouts.base import Layout

LAYOUTS: tuple[Layout, ...] = (
    dicom_seg.LAYOUT,
    dicom.LAYOUT,
    multilabel.LAYOUT,
    totalseg_ml.LAYOUT,
    totalseg.LAYOUT,
)


def layout_names() -> tuple[str, ...]:
    """The names of the registered layouts, sorted (asked when needed, so a layout added to
    :data:`LAYOUTS` is known everywhere)."""
    return tuple(sorted(layout.name for layout in LAYOUTS))


def detect_layout(names: set[str]) -> Layout | None:
    """The layout of a folder from the names of its entries (``None``: no layout matches)."""
    for layout in LAYOUTS:
        if layout.detect(names):
            return layout
    return None


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``."""
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise ValueError(f"layout: found {name!r}, expected one of {layout_names()}")


def expected_layouts() -> str:
    """What a case folder of each layout holds, for a message about a folder that matches
    none (the reverse of detection order: least specific first)."""
    wanted = [layout.expected for layout in reversed(LAYOUTS)]
    return f"{', '.join(wanted[:-1])}, or {wanted[-1]}" if len(wanted) > 1 else wanted[0]
