"""Question generation from records: the framework around the generators.

``generate_questions(image, families, pools, seed=…)`` turns one record
(``docs/conventions.md``) into QA rows.  Each family names a *generator* of
:data:`pipeline.qa.generators.GENERATORS` — the Python that decides the target and the
answer from the record's facts (the context fields each one offers are listed in its
module) — and holds paraphrase variants — the wording, rendered by sandboxed Jinja
(:mod:`pipeline.qa.templates`).

Every choice is seeded from ``(seed, image_id, purpose)``: the target, the
yes/no coin of closed questions, the distractors, the correct option's
position (uniform over A–D) and the variant.  Rows do not depend on the order
of boxes or labels in the record.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping

from pipeline.core import keys
from pipeline.qa import stored_rows
from pipeline.qa.balance import mark as balance_mark
from pipeline.qa.generators import GENERATORS
from pipeline.qa.options import LETTERS
from pipeline.qa.templates import render

DEFAULT_SETTINGS = {"min_area_px": 30, "min_separation_mm": 10.0, "min_size_ratio": 1.25,
                    "per_image": 1}


def assemble(family, made: dict, gen) -> dict:
    """Options and answer of a generated question (MC: correct position uniform over the
    question's two to four options)."""
    if family.question_type == "multiple_choice":
        n = len(made["distractors"]) + 1  # two to four options
        position = made["position"] % n if "position" in made else int(gen.integers(n))
        options = list(made["distractors"])
        options.insert(position, made["correct"])
        return {"options": options, "answer": LETTERS[position], "answer_text": made["correct"],
                "answer_box": None, "context": made["context"] | {"options": options}}
    return {"options": [], "answer": made["answer"], "answer_text": made["answer"],
            "answer_box": made.get("answer_box"), "context": made["context"]}


def generate_questions(
    image: Mapping, families: Mapping, pools, *, seed: int, settings: Mapping | None = None,
    defer: bool = False,
) -> list[dict]:
    """QA rows of one image record, sorted by ``qa_id`` (see module docstring).

    With ``defer``, a row that corpus-wide balancing may drop or re-word (it carries a
    balancing mark) is returned with ``question`` ``None`` and its variant index in
    ``_variant``: :func:`pipeline.qa.balance.apply` renders the rows it keeps, once.
    """
    conf = DEFAULT_SETTINGS | dict(settings or {})
    key = image["image_id"] if "image_id" in image else image["volume_id"]
    qa_id = keys.stable_keys_under("qa", key)
    rows = []
    for name in sorted(families):
        family = families[name]
        gen = keys.KeyedStream(seed, key, f"{name}/target")
        made = GENERATORS[family.generator](image, family, pools, gen, conf)
        if made is None:
            continue
        many = isinstance(made, list)
        for n, item in enumerate(made if many else [made]):
            suffix = f"/{n}" if many else ""
            parts = assemble(family, item, keys.KeyedStream(seed, key, f"{name}/options{suffix}"))
            pick = item["variant"] if "variant" in item else keys.KeyedStream(
                seed, key, f"{name}/variant{suffix}").integers(len(family.variants))
            variant = family.variants[pick]
            m = None
            if family.balance != "none":
                u = keys.KeyedStream(seed, key, f"{name}/balance{suffix}").random()
                m = balance_mark(family, parts["context"], u, item)
            row = {
                "qa_id": qa_id(name, n) if many else qa_id(name),
                "image_id": key,
                "case_key": image["case_key"],
                "split": image["split"],
                "task": family.task,
                "family": name,
                "question_type": family.question_type,
                "question": None if defer and m is not None else render(family, variant, parts["context"]),
                "options": parts["options"],
                "answer": parts["answer"],
                "answer_text": parts["answer_text"],
                "answer_box": parts["answer_box"],
                "question_box": item.get("question_box"),
                "visual_prompt": item.get("visual_prompt"),
                "template_id": variant.id,
            }
            for extra in ("value", "unit", "tolerance", "subtask"):
                if extra in item:
                    row["answer_" + extra if extra in ("value", "unit", "tolerance") else extra] = item[extra]
            if m is not None:
                row["balance"] = m
                row["_context"] = parts["context"]
                if defer:
                    row["_variant"] = int(pick)
            rows.append(row)
    rows.sort(key=lambda r: r["qa_id"])
    return rows


# Rows generated lately, for the second pass over the same records.  A build generates
# each record's questions twice: once for the balancing candidates, once to render them.
# On a runner that runs both passes in one process (FnApiRunner) the second one is a
# lookup here.  Keyed by the build's QA fingerprint (templates, pools, settings, seed,
# inputs) and a digest of the record itself; the rows are held pickled (about a third of
# the memory of the dicts, so a 60-case radvuqa build's ~150K generated rows fit) and
# bounded by bytes held; callers get fresh rows, so nothing they change reaches the memo.
# Both passes visit the records in the same order, so once full the memo keeps what it
# holds (evicting the oldest would make a corpus larger than the bound miss every time)
# and only drops other builds' entries.
_MEMO: OrderedDict = OrderedDict()
_MEMO_BYTES = [0]
MEMO_MAX_BYTES = 96 * 2**20


def record_digest(record: Mapping) -> bytes:
    """What identifies a record's questions besides the build's settings (its pickle's sha256)."""
    return hashlib.sha256(pickle.dumps(dict(record), protocol=5)).digest()


def questions_for(record: Mapping, ctx) -> list[dict]:
    """``generate_questions(record, ctx.families, ctx.pools, …, defer=True)`` for a build
    context (:class:`pipeline.engine.units.BuildContext`), remembered for the next pass over the
    record.  Rows go through :func:`pipeline.qa.balance.apply`, which renders deferred ones."""
    if not ctx.qa_fp:
        return generate_questions(record, ctx.families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings, defer=True)
    key = (ctx.qa_fp, record_digest(record))
    store = stored_rows.current()
    blob = _MEMO.get(key)
    if blob is not None:
        rows = pickle.loads(blob)
        if store is not None:
            store.keep(key[1].hex(), ctx.families, rows)
        return rows

    def generate(families):
        return generate_questions(record, families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings, defer=True)

    # families whose rows an earlier build stored, unchanged, are not generated again
    rows = generate(ctx.families) if store is None else store.rows(key[1].hex(), ctx.families, generate)
    blob = pickle.dumps(rows, protocol=5)
    while _MEMO and _MEMO_BYTES[0] + len(blob) > MEMO_MAX_BYTES and next(iter(_MEMO))[0] != ctx.qa_fp:
        _MEMO_BYTES[0] -= len(_MEMO.popitem(last=False)[1])
    if _MEMO_BYTES[0] + len(blob) <= MEMO_MAX_BYTES:
        _MEMO[key] = blob
        _MEMO_BYTES[0] += len(blob)
    return rows
