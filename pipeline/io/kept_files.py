"""Stored files a build keeps, trusted by their stat receipt, hashed when it differs.

A build reuses files an earlier build wrote (a unit's pixel shards, a tree unit's
``alignment`` shard with its images, an ``ood`` shard, a finished unit's every file) only
when they still hold the bytes its receipt records (sha256).  Hashing them again on every
regenerate cost 0.27 s of CPU of a 2.9 s regenerate of a 10K-image 224 px tree (470 MB of
``alignment`` shards; measured), more than any other single step.

So each receipt also records every file's *stat identity* (:func:`identity`: size,
``st_mtime_ns``, ``st_ctime_ns``, inode and device), taken when the receipt is written,
just after the file was written (or verified).  A later build trusts a file whose stat
identity is still exactly the recorded one, and hashes every other: a file rewritten,
edited in place (its ctime moves even when its size and mtime are put back with ``utime``),
replaced by a copy, moved aside or restored from a backup (other inode or ctime) is hashed
and, when its bytes differ, rebuilt.  What a stat cannot see — bytes changed under a fixed
ctime (a disk fault, a filesystem edited offline, or an edit of the same size within the
filesystem's timestamp tick of the receipt, a few ms) — is what ``--verify-shards`` is for:
with it (``verify=True`` here) every kept file is hashed, whatever its stat.  Remote files
(``gs://`` …) have no stat identity here: they are always hashed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

from pipeline.io import shards


def identity(root: str, rel: str) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns, inode, device]`` of a local file; ``None`` for a remote
    or missing one."""
    path = shards.join(root, rel)
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def identities(root: str, rels: Iterable[str]) -> dict[str, list[int]]:
    """``{rel: identity}`` of the local files among ``rels`` (a receipt's ``"stat"``)."""
    out = {}
    for rel in sorted(rels):
        got = identity(root, rel)
        if got is not None:
            out[rel] = got
    return out


def unchanged(root: str, rel: str, sha256: str, stat=None, verify: bool = False) -> bool:
    """Whether ``root/rel`` holds the bytes of ``sha256``: trusted when its stat identity is
    ``stat`` (and ``verify`` is off), else hashed (streamed: a shard is never held whole)."""
    if not verify and stat is not None and identity(root, rel) == list(stat):
        return True
    try:
        return file_sha256(root, rel) == sha256
    except OSError:
        return False


def file_sha256(root: str, rel: str) -> str:
    """The sha256 of ``root/rel`` (a local file streamed, never held whole)."""
    path = shards.join(root, rel)
    if "://" in path:
        return hashlib.sha256(shards.read_bytes(root, rel)).hexdigest()
    return shards.local_sha256(path)


def all_unchanged(root: str, files: Mapping[str, Mapping], stats: Mapping | None = None,
                  verify: bool = False) -> bool:
    """:func:`unchanged` for every file of a receipt's ``files`` (``stats``: its ``"stat"``)."""
    stats = stats or {}
    return all(unchanged(root, rel, info["sha256"], stats.get(rel), verify)
               for rel, info in files.items())
