"""Fetch real third-party test data into .cache/testdata (idempotent, offline-safe).

* ``pyradiomics-bhklab==3.1.4`` sdist: its ``data/`` folder holds real lung CT
  with tumour masks and brain MR with labels (NRRD).  Fetched with
  ``pip download --no-deps`` (the sdist is never built or installed).

Prints the folder; exits non-zero with the reason when it cannot fetch.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "testdata"
PYRADIOMICS = "pyradiomics-bhklab==3.1.4"


def pyradiomics_data() -> Path:
    """Folder with the pyradiomics sample NRRDs (lung1_image.nrrd, lung1_label.nrrd, …)."""
    target = CACHE / "pyradiomics" / "data"
    if (target / "lung1_label.nrrd").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "-q", "-d", tmp, PYRADIOMICS],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "data" and parts[2].endswith(".nrrd"):
                    member.name = parts[2]
                    tar.extract(member, target, filter="data")
    return target


if __name__ == "__main__":
    print(pyradiomics_data())
