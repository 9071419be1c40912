"""Text cells of the tables we export (TSV, CSV) as ``pandas.read_csv`` reads them back.

Consumers read our tables with pandas' defaults (VLMEvalKit's ``vlmeval/smp/file.py:
load`` is ``pd.read_csv(f, sep="\\t")``), which turn every cell spelled like one of
:data:`NA_TOKENS` into NaN — quoted or not (``"None"`` in quotes is NaN too; pandas
3.1.1, measured).  No quoting or escaping of pandas' default reader keeps such a
string, so :func:`table_text` writes it in another letter case (the first of lower,
capitalised, upper case that pandas keeps: ``None`` -> ``none``, ``null`` -> ``Null``,
``N/A`` -> ``N/a``), which reads back as a string equal to the text ignoring case
(VLMEvalKit's option matching, ``can_infer_text``, lower-cases both sides).  An empty
cell stays empty: it means "no value" and reads back as NaN, which is what VLMEvalKit
expects of an absent option column (``build_choices`` skips NaN).
"""

from __future__ import annotations

#: pandas' default ``na_values`` (``pandas._libs.parsers.STR_NA_VALUES``, pandas 2.x and 3.x;
#: ``tests/test_consumers.py`` checks this list against the installed pandas).
NA_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})


def table_text(value: object) -> str:
    """``value`` as a table cell pandas' default reader reads back as a string.

    ``None`` and ``""`` give ``""`` (no value: NaN on reading, on purpose); a text in
    :data:`NA_TOKENS` is recased (see the module); any other text is returned as is.

    Examples
    --------
    >>> [table_text(v) for v in ("None", "NA", "null", "nan", "N/A", "#N/A", "-nan", "fluid")]
    ['none', 'na', 'Null', 'Nan', 'N/a', '#n/a', '-NAN', 'fluid']
    """
    if value is None:
        return ""
    text = str(value)
    if text == "" or text not in NA_TOKENS:
        return text
    for variant in (text.lower(), text.capitalize(), text.upper()):
        if variant not in NA_TOKENS:
            return variant
    raise AssertionError(f"no letter case of {text!r} escapes pandas' NA values")  # none exists in pandas' list
