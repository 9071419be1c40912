"""Export a built corpus to training and evaluation frameworks' formats (``radvqa export``).

One module per format behind a registry:

``registry``
    :data:`~pipeline.exports.registry.FORMATS` (name -> format) and
    :func:`~pipeline.exports.registry.export_corpus`, which validates and runs an export.
``format``
    :class:`~pipeline.exports.format.ExportFormat`, the interface a format implements.
``llava``, ``sharegpt``, ``vlmevalkit``
    The formats (``conversations`` holds what llava and sharegpt share).
``records``
    Rows normalised and rendered as turns; media written by id.
``boxes``
    Box coordinate styles (pixel, qwen2.5-vl, internvl, llava) and their frames.
``cells``
    Table cells pandas reads back as written (no bare NA tokens).
``selection``
    What an export takes from a corpus: its kind, the configs each kind's rows and media
    are in (:data:`~pipeline.exports.selection.LAYOUTS`), the default file prefix.
``base``
    :class:`~pipeline.exports.base.ExportError`, :class:`~pipeline.exports.base.ExportResult`,
    the output folder and the streamed JSON list writer.

The corpus is read through :class:`pipeline.io.corpus.Corpus`, every file written through
:class:`pipeline.io.atomic.AtomicFile`.

Reading is shard by shard: a unit's QA shard and the media shard of the same
name (one work unit writes both), falling back to the other media shards for
an id the paired one lacks; image bytes are never all in memory.  Only the
configs listed in ``manifest.json`` are read — never ``dead_letters/``,
``.radvqa/`` or ``report/`` — and media files are named by id (no source file name exists in
a corpus).  Output is deterministic: splits in order, shards in name order,
rows sorted by id inside a shard; JSON is UTF-8 with ``ensure_ascii=False``;
every file is written under a temporary name, then renamed.
"""
