"""The tree kind's question plans, remembered across builds into the same output.

:func:`pipeline.qa.tree_balance.plan_tree_questions` plans every image's balanced
questions from the file list on the launcher: 0.25-0.3 s of CPU of a 2.9 s regenerate of a
10K-image tree (measured), 3.6 s at 100K images.  A template's wording edit cannot change
that plan: it is a function of the images (key, split, modality, region, label), the
families' generators and paraphrase counts (not their wording), the pools, the seed, the
questions' settings, the population and the planning code.  :func:`plan_key` digests
exactly these; :func:`load` returns the plan stored under the same key in
``.radvqa/question-plans/<population>.marshal`` (``splits`` or ``benchmark``), else the
caller plans and :func:`store` keeps it (:func:`planned` does both).

Any change of those inputs gives another key — an image added, renamed, moved to another
split or relabelled, a family added or its paraphrases counted differently, a pool or
setting edited, the seed, or any byte of the planning code — and the plan is made again.
The stored file holds its key; an unreadable or foreign one is planned again.  It is the
plan in :mod:`marshal`'s format behind a header naming the format, this Python's
``marshal`` version and the key (:func:`_header`), then the plan's sha256: another Python,
or another plan, misses it without reading further, and a damaged or cut-short one is
planned again without being unmarshalled (:mod:`marshal` is not made to read damaged data;
the check costs about 1 ms at 10K images).  Measured at 10K images: 1.9 MB, read in 0.020-0.021 s of
CPU where its one-line JSON (3.65 MB) took 0.031-0.034 s, written in 0.005-0.007 s
against 0.028-0.030 s; at RadImageNet's 750K images, linearly, about 140 MB of build
state, against about 27 s of planning saved by each regenerate that reads it.  The plan
holds plain values only (str, int, bool, lists, str-keyed dicts): :mod:`marshal` gives it
back as it was planned.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import marshal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.core import keys
from pipeline.core.collector import collector_paused
from pipeline.io import shards
from pipeline.qa.tree_balance import plan_tree_questions
from pipeline.schema.layout import STATE_DIR

PLANS_DIR = f"{STATE_DIR}/question-plans"
_PACKAGE = Path(__file__).resolve().parent.parent
#: The planning code: every module :func:`plan_tree_questions` runs, and this one.
_CODE = ("kinds/tree_plans.py", "qa/tree_balance.py", "qa/balance.py", "qa/options.py",
         "qa/label_pools.py", "core/keys.py")


@functools.cache
def _code() -> str:
    return keys.source_digest([_PACKAGE / p for p in _CODE], root=_PACKAGE, dists=("numpy",))


def _pools_json(pools) -> str:
    """The pools' content as canonical JSON (sets sorted): a key part, stable across runs."""
    data = dataclasses.asdict(pools) if dataclasses.is_dataclass(pools) else vars(pools)
    return json.dumps(data, sort_keys=True, default=sorted)


def plan_key(images: Sequence, families: Mapping, pools, seed: int, settings: Mapping,
             population: str | None) -> str:
    """Everything a plan is made of (see the module docstring)."""
    fams = sorted((name, f.generator, len(f.variants)) for name, f in families.items())
    rows = "\x1e".join(f"{i.key}\x1f{i.split}\x1f{i.modality}\x1f{i.region}\x1f{i.label}"
                       for i in images)
    return keys.digest(_code(), json.dumps(fams), _pools_json(pools), int(seed),
                       json.dumps(dict(settings), sort_keys=True, default=str),
                       population or "", len(images), rows)


def load(output: str, key: str, population: str | None = None) -> dict[str, dict] | None:
    """The plan stored under ``key`` (:func:`plan_key`) by this Python, or ``None``."""
    try:
        data = shards.read_bytes(output, _rel(population))
    except OSError:
        return None
    head = _header(key)
    if not data.startswith(head):
        return None
    body = memoryview(data)[len(head) + 32:]
    if hashlib.sha256(body).digest() != data[len(head):len(head) + 32]:
        return None  # cut short or damaged: marshal is not made to read damaged data
    try:
        with collector_paused():  # 10K images: 0.3M objects, none of them in a cycle
            plans = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    return plans if isinstance(plans, dict) else None


def store(output: str, key: str, plans: dict, population: str | None = None) -> None:
    """Keep ``plans`` under ``key`` (a plan of other than plain values is not kept: planned
    again next time)."""
    try:
        body = marshal.dumps(plans)
    except ValueError:
        return
    shards.write_bytes(output, _rel(population), _header(key) + hashlib.sha256(body).digest() + body)
    before = f"{PLANS_DIR}/{population or 'splits'}.json"  # an earlier version's, as JSON
    if shards.exists(output, before):
        shards.delete([shards.join(output, before)])


def _header(key: str) -> bytes:
    """What a stored plan's bytes start with: the format, this Python's and its
    ``marshal``'s versions, and the plan's key (then the sha256 of the marshal bytes, and
    those bytes)."""
    return (f"radvqa question plan\0{sys.implementation.cache_tag}\0{marshal.version}\0"
            f"{key}\n").encode()


def planned(output: str, images: Sequence, families: Mapping, pools, seed: int,
            settings: Mapping, population: str | None = None, workers: int = 1) -> dict[str, dict]:
    """:func:`plan_tree_questions`'s plan (of ``population``, ``None``: every image's, per
    split): the stored one when its key is this plan's, else planned — with a second
    process when :func:`_plan` takes one — and stored."""
    return planned_with_key(output, images, families, pools, seed, settings, population, workers)[1]


def planned_with_key(output: str, images: Sequence, families: Mapping, pools, seed: int,
                     settings: Mapping, population: str | None = None,
                     workers: int = 1) -> tuple[str, dict[str, dict]]:
    """``(its key, the plan)`` of :func:`planned`: the key names the plan (every image's
    choices) for whoever keeps what is made from it (:mod:`pipeline.kinds.tree_blocks`)."""
    images = list(images)
    key = plan_key(images, families, pools, seed, settings, population)
    plans = load(output, key, population)
    if plans is None:
        plans = _plan(images, families, pools, seed, settings, population, workers)
        store(output, key, plans, population)
    return key, plans


#: With ``--workers N`` (N > 1) and at least this many images, a process from the warm
#: workers' forkserver assigns about half of the distractors while the launcher plans the
#: rest (100K images: 2.0 s of 3.6 s of question planning were distractors); below it the
#: process's start costs more than it saves.
PLAN_POOL_MIN_IMAGES = 50_000


def _plan(images, families, pools, seed, settings, population, workers: int) -> dict:
    """:func:`plan_tree_questions`, helped by a one-process pool when ``workers`` and the
    images call for one (:data:`PLAN_POOL_MIN_IMAGES`); forkserver: forked from the warm
    workers' server, never from the launcher itself."""
    if workers < 2 or len(images) < PLAN_POOL_MIN_IMAGES:
        return plan_tree_questions(images, families, pools, seed, settings, population=population)
    # the pool's modules only here: multiprocessing and concurrent.futures
    # cost ~8 ms of a regenerate's start-up, which never plans with a pool
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            return plan_tree_questions(images, families, pools, seed, settings,
                                       population=population, pool=pool)
    except BrokenProcessPool:  # its process died (out of memory, killed): all planned here
        return plan_tree_questions(images, families, pools, seed, settings, population=population)


def _rel(population: str | None) -> str:
    return f"{PLANS_DIR}/{population or 'splits'}.marshal"
