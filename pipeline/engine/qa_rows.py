"""A unit's generated questions, kept for the next build (``.radvqa/qa-rows/<unit>.pkl``).

Generating questions is most of what ``radvqa regenerate`` does after a template edit, and
an edit touches one family: every other family's rows of every record are what the last
build generated.  The render pass of each unit stores, per record (by the digest of the
record itself), the fingerprints of the families it generated and their rows
(:func:`pipeline.qa.questions.stored_rows`); the next build of the unit takes the rows of
the families whose fingerprint is unchanged and generates the others.  A family's
fingerprint covers its template file as loaded and the launcher's ``qa_rows_base``
(seed, question settings, pool files, code versions), so anything else that changes rows
is a new fingerprint; balancing, wording of balanced rows and the Parquet shards are
computed as always, so outputs are the same bytes as a build without the file.

The file is a cache: it is never published, a missing, unreadable or foreign one is
ignored (questions generated), and it holds plain data only — it is read back without
unpickling any class.
"""

from __future__ import annotations

import pickle
import zlib
from contextlib import contextmanager

from pipeline.engine.units import BuildContext, UnitRef
from pipeline.io import shards
from pipeline.qa.questions import family_fingerprints, plain_loads, stored_rows
from pipeline.schema.layout import QA_ROWS_DIR

#: ``extras`` key of the build context: the launcher's digest of what every family's rows
#: depend on besides the family and the record (absent: nothing stored or reused).
BASE_KEY = "qa_rows_base"


def path(ref: UnitRef) -> str:
    return f"{QA_ROWS_DIR}/{ref.unit_id}.pkl"


def load(output: str, ref: UnitRef) -> dict:
    """The unit's stored rows, ``{}`` when there are none or they cannot be read."""
    if not shards.exists(output, path(ref)):
        return {}
    try:
        got = plain_loads(zlib.decompress(shards.read_bytes(output, path(ref))))
    except (OSError, zlib.error, pickle.UnpicklingError, EOFError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


@contextmanager
def scope(ctx: BuildContext, ref: UnitRef, save: bool = False):
    """Question generation within: the unit's stored rows reused family by family; with
    ``save``, this build's rows stored for the next one when the block ends."""
    base = (ctx.extras or {}).get(BASE_KEY)
    if not base:
        yield
        return
    with stored_rows(load(ctx.output, ref), family_fingerprints(base, ctx.families)) as collected:
        yield
    if save:
        shards.write_bytes(ctx.output, path(ref),
                           zlib.compress(pickle.dumps(collected, protocol=5), 1))
