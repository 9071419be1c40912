"""The input layout of a case folder: one :class:`Layout` interface, and what layouts share.

A layout knows four things about a case folder whose files it recognises:

* ``detect``: whether a folder's entries are laid out its way;
* ``files``: the case's files as ``(role, path relative to the input root)`` pairs, checked
  (a missing file raises :class:`~pipeline.errors.CaseError`, stage ``discover``);
* ``load``: the case's canonical image volume and masks (:class:`LoadedCase`), read through
  the reader registry (:func:`~pipeline.inputs.readers.reader_for`,
  :func:`~pipeline.inputs.readers.mask_reader_for`), never a format's reader directly;
* ``fingerprint_paths``: the input files and folders whose stat identity fingerprints the case;
* optionally ``content_digests``: ``load``'s ``digests`` from the files' bytes alone (hashed,
  never decoded), for a layout whose digests cover every byte ``load`` reads: a case whose
  files' modification times changed while their paths and sizes did not keeps its rows
  when these equal the digests its rows were extracted from (:func:`segmentations_digests`).

Layouts are registered, in detection order, in :mod:`pipeline.inputs.layouts`.  A case is a
planned :class:`~pipeline.inputs.discovery.CaseSource`; it is not imported here (discovery
imports the registry), layouts only read its ``files``, ``modality`` and ``file(role)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.core.masks import Mask
from pipeline.errors import CaseError
from pipeline.inputs import readers  # its reader_for/mask_reader_for imported when first called
from pipeline.inputs.readers import (
    VOLUME_SUFFIXES,
    Volume,
    file_sha256,
    is_volume_file,
    iter_mask_files,
    strip_volume_suffix,
)
from pipeline.inputs.tree import InputTree


@dataclass(frozen=True)
class LoadedCase:
    """A case as its layout reads it, before empty masks are dropped.

    ``masks``: ``{structure name: Mask}`` on the volume's canonical grid, each cropped to
    its extent (:class:`~pipeline.core.masks.Mask`; a whole boolean volume is accepted too
    and cropped by :func:`~pipeline.engine.extract.load_case`, at the cost of holding it);
    ``digests``: sha256 digests of the image and mask contents, in reading order;
    ``notes``: what the readers left out or assumed (``{note: [...]}``);
    ``masks_path``: the file or folder the masks came from (relative), for messages;
    ``findings``: the labels present per the source's label table, for layouts whose
    findings come from a table rather than masks (CT-RATE), else ``None``.
    """

    volume: Volume
    masks: dict[str, Mask | np.ndarray]
    digests: tuple[str, ...]
    masks_path: str
    notes: dict = field(default_factory=dict)
    findings: tuple[str, ...] | None = None


class Layout(Protocol):
    """How one kind of case folder is recognised, listed, read and fingerprinted."""

    #: The layout's name (``CaseSource.layout``, ``--layout``, the recipe's ``source.layout``).
    name: str
    #: What a folder of this layout holds, for the message naming the layouts a folder matches none of.
    expected: str

    def detect(self, names: set[str]) -> bool:
        """Whether a folder whose entries are ``names`` is laid out this way."""
        ...

    def holds_one_case(self, names: set[str]) -> bool:
        """Whether an input root with entries ``names`` (detected as this layout) is itself
        one case rather than a folder of cases."""
        ...

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        """``(files, modality)`` of case ``folder`` (entries ``found``): ``(role, relative path)``
        pairs, and ``CT``/``MR`` when the names tell it (else ``""``)."""
        ...

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        """The volume and masks of ``case`` (files below the local folder ``root``)."""
        ...

    def fingerprint_paths(self, case) -> list[str]:
        """Input files and folders (relative) whose stat identity fingerprints ``case``."""
        ...


# ------------------------------------------------------------------ shared by the layouts


def volume_stems(names: set[str]) -> dict[str, str]:
    """``{lower-case stem: name}`` of the volume files among ``names``."""
    return {strip_volume_suffix(n).lower(): n for n in names if is_volume_file(n)}


def rel(folder: str, *parts: str) -> str:
    """``folder/part/…`` relative to the input root (``.`` is the root itself)."""
    return "/".join(p for p in (folder, *parts) if p and p != ".")


def pick(found: set[str], stem: str) -> str | None:
    """The entry named ``stem`` + a volume suffix (first suffix, then name, that matches)."""
    for suffix in VOLUME_SUFFIXES:
        for name in sorted(found):
            if name.lower() == stem + suffix:
                return name
    return None


def has_files(tree: InputTree, folder: str, accept: Callable[[str], bool]) -> bool:
    """Whether ``folder`` holds (at any depth) a non-hidden file ``accept`` likes."""
    return any(accept(f.rsplit("/", 1)[-1]) for f in tree.walk_files(folder))


def segmentations_files(tree: InputTree, folder: str, found: set[str]) -> tuple[str, str]:
    """The ``segmentations`` entry of a case with per-structure mask files, checked."""
    segmentations = rel(folder, "segmentations")
    if "segmentations" not in found or not tree.isdir(segmentations):
        raise CaseError(
            "discover", "source.missing_segmentations",
            f"entries: found {sorted(found)[:8]}, expected a segmentations/ folder of "
            "per-structure masks",
            rel(folder),
        )
    if not has_files(tree, segmentations, is_volume_file):
        raise CaseError(
            "discover", "source.missing_segmentations",
            "segmentations/: found no mask files, expected one <structure>.nii.gz (or "
            ".nrrd/.mha) per structure",
            rel(folder, "segmentations"),
        )
    return ("segmentations", segmentations)


def read_image(case, root: str, max_voxels: int) -> Volume:
    """The case's ``image`` volume file, read by the reader the registry picks for it
    (modality from discovery, CT when unknown)."""
    path = case.file("image")
    files = [(os.path.join(root, path), path)]
    return readers.reader_for(files).read(files, modality=case.modality or "CT", max_voxels=max_voxels)


def read_segmentations(case, root: str, volume: Volume, notes: dict | None = None
                       ) -> tuple[dict[str, Mask], list[str]]:
    """``({structure: mask}, digests)`` of the case's ``segmentations/`` folder, one mask per
    file, each read by the mask reader the registry picks and checked against the image grid
    (held cropped to its extent: 117 files of a TotalSegmentator case, most of them empty,
    cost their reading and one scan each); what the readers assumed goes to ``notes``."""
    masks: dict[str, Mask] = {}
    digests: list[str] = []
    for name, full, mrel in iter_mask_files(root, case.file("segmentations")):
        mask, digest = readers.mask_reader_for(full, mrel).read_mask(full, mrel, volume.geometry, notes)
        digests.append(digest)
        masks[name] = mask
    return masks, digests


def segmentations_digests(case, root: str, image: list[tuple[str, str]], *,
                          folder: bool = False) -> tuple[str, ...]:
    """:func:`with_segmentations`'s ``LoadedCase.digests`` of ``case`` from its files' bytes
    alone: the image's (``image``: its ``(absolute, relative)`` files, ``folder`` as
    :func:`~pipeline.inputs.readers.reader_for`'s) as its reader digests it, then each
    mask file's sha256 in reading order (every mask reader's digest is its file's).  A file
    no reader takes raises as :meth:`Layout.load` would."""
    digests = [image_digest(image, folder=folder)]
    for _, full, mrel in iter_mask_files(root, case.file("segmentations")):
        digests.append(mask_file_digest(full, mrel))
    return tuple(digests)


def image_digest(files, *, folder: bool = False) -> str:
    """The ``content_sha256`` the reader of the image ``files`` (``(absolute, relative)``,
    ``folder`` as :func:`~pipeline.inputs.readers.reader_for`'s) gives their volume, from
    their bytes alone (hashed, never decoded)."""
    return readers.reader_for(files, folder=folder).content_digest(files)


def mask_file_digest(path: str, rel: str) -> str:
    """The digest a mask reader gives the mask or label map file ``rel`` (absolute ``path``):
    its sha256, whichever reader takes it (a file no reader takes raises, as reading it)."""
    readers.mask_reader_for(path, rel)
    return file_sha256(path)


def listed_files(case) -> list[str]:
    """Every file and folder the case lists: what fingerprints a case whose layout reads
    nothing beyond them (its ``fingerprint_paths``)."""
    return [path for _, path in case.files]


def with_segmentations(case, root: str, volume: Volume) -> LoadedCase:
    """The case loaded: ``volume`` with the masks of its ``segmentations/`` folder
    (:func:`read_segmentations`), digested together."""
    notes = {k: list(v) if isinstance(v, list) else v for k, v in volume.notes.items()}
    masks, digests = read_segmentations(case, root, volume, notes)
    return LoadedCase(volume, masks, (volume.content_sha256, *digests),
                      case.file("segmentations"), notes)
