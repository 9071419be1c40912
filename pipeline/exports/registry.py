"""The export formats by name, and :func:`export_corpus`, which validates an export and runs it.

Adding a format: one module defining an :class:`~pipeline.exports.format.ExportFormat`
instance, and one line in :data:`FORMATS` (its order is the CLI's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.exports import llava, sharegpt, vlmevalkit
from pipeline.exports.base import ExportError, ExportResult, prepare_output
from pipeline.exports.boxes import box_style, with_pixels
from pipeline.exports.format import ExportFormat, ExportJob
from pipeline.exports.selection import corpus_name, detect_kind, safe_name
from pipeline.io.corpus import Corpus, CorpusError
from pipeline.schema.layout import MANIFEST

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    llava.FORMAT,
    sharegpt.FORMAT,
    vlmevalkit.FORMAT,
)}


def export_corpus(corpus_dir: str, output_dir: str, fmt: str, *, splits: Sequence[str] | None = None,
                  boxes: str | None = None, captions: bool = False, name: str | None = None,
                  log: Callable[[str], None] | None = None, min_pixels: int | None = None,
                  max_pixels: int | None = None) -> ExportResult:
    """Export a built corpus to ``fmt``.

    Parameters
    ----------
    corpus_dir : str
        A corpus written by ``radvqa build`` (local folder with ``manifest.json``).
    output_dir : str
        Export folder; created, and must be empty if it exists.
    fmt : str
        A name of :data:`FORMATS` (``llava``, ``sharegpt``, ``vlmevalkit``).
    splits : sequence of str, optional
        Splits to export; default every split for llava/sharegpt and ``test``
        for vlmevalkit (the format's :meth:`~pipeline.exports.format.ExportFormat.default_splits`).
    boxes : {"pixel", "qwen2.5-vl", "internvl", "llava"}, optional
        Box convention; default the format's ``default_boxes``.
    captions : bool
        Tree corpora, llava/sharegpt: also write the ``alignment`` captions
        (``<name>_captions_<split>.json``).
    name : str, optional
        File prefix (default ``radvqa_<recipe name>``).
    log : callable, optional
        Progress messages (default: silent).
    min_pixels, max_pixels : int, optional
        ``qwen2.5-vl`` boxes: the bounds of the ``smart_resize`` frame (default Qwen2.5-VL's
        processor: 3,136 and 12,845,056); set them to the model's ``min_pixels`` /
        ``max_pixels`` when training with others.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        Unknown format, box style or split; a corpus that is not one or lacks a
        column; a corpus kind the format does not take (vlmevalkit on a volume
        corpus); a non-empty output folder.  The corpus reader's
        :class:`~pipeline.io.corpus.CorpusError` (no manifest, a listed shard missing or
        without a column) is raised as an ``ExportError`` with its message.
    """
    try:
        return _export(corpus_dir, output_dir, fmt, splits, boxes, captions, name, log, (min_pixels, max_pixels))
    except CorpusError as err:
        raise ExportError(str(err)) from err


def _export(corpus_dir: str, output_dir: str, fmt: str, splits: Sequence[str] | None, boxes: str | None,
            captions: bool, name: str | None, log: Callable[[str], None] | None,
            pixels: tuple[int | None, int | None] = (None, None)) -> ExportResult:
    """:func:`export_corpus`, the reader's errors not yet turned into ``ExportError``."""
    log = log or (lambda msg: None)
    export_format = FORMATS.get(fmt)
    if export_format is None:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    style = with_pixels(box_style(boxes or export_format.default_boxes), *pixels)
    corpus = Corpus(corpus_dir)
    manifest = corpus.check_manifest()
    kind = detect_kind(manifest, corpus.configs)
    prefix = safe_name(name) if name else corpus_name(manifest)
    if kind not in export_format.kinds:
        raise ExportError(export_format.kind_error(corpus_dir, kind))
    if captions and not (export_format.captions and kind == "tree"):
        takers = " or ".join(n for n, f in FORMATS.items() if f.captions)
        raise ExportError(f"captions: only tree corpora have alignment captions, exported with {takers} "
                          f"(this is a {kind} corpus, format {fmt})")
    layout = export_format.layout(corpus, kind)
    available = corpus.splits(layout.rows)
    if not available:
        raise ExportError(f"{corpus_dir}/{MANIFEST}: files: no {layout.rows}/ shards to export")
    wanted = list(dict.fromkeys(splits)) if splits else export_format.default_splits(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ExportError(f"splits: {', '.join(unknown)} not in {layout.rows}/ (available: "
                          f"{', '.join(available)})")
    prepare_output(output_dir)
    result = ExportResult(fmt, kind, output_dir, None if kind == "volumes" else style.name)
    export_format.export(ExportJob(corpus, layout, wanted, output_dir, prefix, style, captions, result, log))
    return result
