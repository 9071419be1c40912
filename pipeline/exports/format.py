"""The declared interface of an export format, and the job :func:`~pipeline.exports.registry.export_corpus`
hands it.

A format is one module defining a subclass of :class:`ExportFormat` and one
instance of it, listed in :data:`pipeline.exports.registry.FORMATS`.  The
driver validates everything a format declares (corpus kind, captions, box
style, splits, an empty output folder) before :meth:`ExportFormat.export` runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.exports.base import ExportResult
from pipeline.exports.boxes import BoxStyle
from pipeline.exports.selection import KINDS, LAYOUTS, Layout
from pipeline.io.corpus import Corpus


@dataclass
class ExportJob:
    """One export, validated: what to read, where to write, how to write boxes.

    Attributes
    ----------
    corpus : pipeline.io.corpus.Corpus
        The corpus, its manifest checked.
    layout : Layout
        Where the exported rows and their media are (:meth:`ExportFormat.layout`).
    splits : list of str
        Splits to export, in order; each has shards of ``layout.rows``.
    output : str
        The export folder (exists and is empty).
    prefix : str
        File name prefix (``radvqa_<recipe name>`` unless given).
    style : BoxStyle
    captions : bool
        Also export the ``alignment`` captions (only when the format has :attr:`ExportFormat.captions`
        and the corpus is a tree corpus).
    result : ExportResult
        Filled in by the format: files written (rows each) and media written.
    log : callable
        Progress messages.
    """

    corpus: Corpus
    layout: Layout
    splits: list[str]
    output: str
    prefix: str
    style: BoxStyle
    captions: bool
    result: ExportResult
    log: Callable[[str], None]


class ExportFormat(ABC):
    """One export format.

    Attributes
    ----------
    name : str
        The ``--format`` value.
    title : str
        The name as the CLI's one-line help gives it.
    help : str
        What the format writes (``--format`` help).
    default_boxes : str
        Box style (:data:`pipeline.exports.boxes.BOX_STYLES`) without ``--boxes``.
    kinds : tuple of str
        Corpus kinds it exports.
    captions : bool
        Whether it exports a tree corpus's ``alignment`` captions (``--captions``).
    """

    name: str
    title: str
    help: str
    default_boxes: str
    kinds: tuple[str, ...] = KINDS
    captions: bool = False

    def kind_error(self, corpus_dir: str, kind: str) -> str:
        """The message for a corpus of a kind outside :attr:`kinds`."""
        return f"{corpus_dir}: {self.name} does not export {kind} corpora (only {', '.join(self.kinds)})"

    def layout(self, corpus: Corpus, kind: str) -> Layout:
        """Where the rows it exports are in ``corpus`` of ``kind``: by default the QA config of the kind."""
        return LAYOUTS[kind]

    def default_splits(self, available: list[str]) -> list[str]:
        """Splits exported without ``--splits``: by default all of them."""
        return available

    @abstractmethod
    def export(self, job: ExportJob) -> None:
        """Write the export's files into ``job.output`` and record them in ``job.result``."""
