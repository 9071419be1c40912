"""Input discovery: case folders, their layout, and patient mapping.

A *case* is one immediate sub-folder of the input root (or the root itself
when it is a case).  Its layout (totalseg, multilabel, dicom: see
:mod:`pipeline.inputs.layouts`) is detected from its files (``--layout``
overrides).

An optional ``meta.csv`` (TotalSegmentator style, ``;`` or ``,`` separated)
at the root maps ``image_id`` (the case folder) to ``patient_id``,
``study_order`` and ``split`` (:mod:`pipeline.inputs.meta_table`); without it
every case is its own patient.

Case keys are HMAC pseudonyms of the source-relative folder path; patient keys
HMAC pseudonyms of the patient id.  Neither the path nor the id is kept in
anything that reaches the corpus: the ``source`` field travels only to the
dead-letter output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core import keys
from pipeline.errors import CaseError
from pipeline.inputs.layouts import detect_layout, expected_layouts, get_layout, layout_names
from pipeline.inputs.meta_table import META_TABLE, MetaRow, parse_meta_table
from pipeline.inputs.tree import InputTree


@dataclass(frozen=True)
class CaseSource:
    """One planned case.  ``source`` and ``files`` are relative to the input root."""

    key: str
    patient_key: str
    source: str
    layout: str
    modality: str
    files: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    study_order: int = 0
    #: The split ``meta.csv`` gives the case (``""``: none); see :mod:`~pipeline.inputs.meta_table`.
    split: str = ""

    def __post_init__(self) -> None:
        if self.layout not in layout_names():
            raise ValueError(f"CaseSource.layout must be one of {layout_names()}, got {self.layout!r}")
        if self.modality not in ("CT", "MR", ""):
            raise ValueError(f"CaseSource.modality must be CT, MR or '', got {self.modality!r}")

    def file(self, role: str) -> str:
        for r, path in self.files:
            if r == role:
                return path
        raise KeyError(role)


@dataclass(frozen=True)
class Rejected:
    """A folder that could not be planned as a case."""

    source: str
    reason: str
    message: str


def read_meta_table(root) -> dict[str, MetaRow]:
    """``{case folder: MetaRow}`` from ``root/meta.csv`` if present (``root``: a folder or an
    :class:`~pipeline.inputs.tree.InputTree`); see :mod:`pipeline.inputs.meta_table`."""
    tree = _tree(root)
    if not tree.isfile(META_TABLE):
        return {}
    return parse_meta_table(tree.read_bytes(META_TABLE).decode("utf-8-sig"))


def _tree(root) -> InputTree:
    return root if isinstance(root, InputTree) else InputTree(root)


def discover_cases(
    root, *, pseudonym_key: str, layout: str = "auto"
) -> tuple[list[CaseSource], list[Rejected]]:
    """Plan every case below ``root`` (a folder, a filesystem URL or an
    :class:`~pipeline.inputs.tree.InputTree`); folders that are not cases are returned as
    rejected."""
    tree = _tree(root)
    if not tree.exists():
        raise FileNotFoundError(f"--input: {tree.root} is not a directory")
    entries = tree.listdir("")
    names = set(entries)
    root_layout = detect_layout(names)
    if root_layout is not None and root_layout.holds_one_case(names):
        folders = ["."]  # the input folder is itself one case
    else:
        folders = [e for e in entries if tree.isdir(e) and not e.startswith(".")]
    meta = read_meta_table(tree) if folders != ["."] else {}
    forced = None if layout == "auto" else get_layout(layout)
    cases, rejected = [], []
    for folder in folders:
        found = set(tree.listdir(folder if folder != "." else ""))
        case_layout = forced or detect_layout(found)
        if case_layout is None:
            rejected.append(
                Rejected(
                    folder, "source.unknown_layout",
                    f"entries: found {sorted(found)[:8]}, expected {expected_layouts()}",
                )
            )
            continue
        try:
            files, modality = case_layout.files(tree, folder, found)
        except CaseError as err:
            rejected.append(Rejected(err.path or folder, err.reason, err.message))
            continue
        row = meta.get(folder, MetaRow(folder))
        cases.append(
            CaseSource(
                key=keys.pseudonym(pseudonym_key, "case", folder),
                patient_key=keys.pseudonym(pseudonym_key, "patient", row.patient),
                source=folder,
                layout=case_layout.name,
                modality=modality,
                files=tuple(files),
                study_order=row.order,
                split=row.split,
            )
        )
    cases.sort(key=lambda c: c.key)
    return cases, rejected
