"""The corpus kinds a recipe can build (``source.kind`` in the recipe).

=========== ==================================================== =========================
kind        inputs                                               configs
=========== ==================================================== =========================
``slices``  CT/MR volumes with masks (TotalSegmentator,          ``qa``, ``images``,
            multilabel, DICOM layouts)                           ``structures``
``tree``    labelled 2D images ``<modality>/<region>/<label>/``  ``instruct``, ``alignment``,
            (RadImageNet style)                                  ``benchmark``
``volumes`` CT volumes with masks, longitudinal studies          ``qa``, ``volumes``
=========== ==================================================== =========================
"""

from __future__ import annotations

from pipeline.inputs.layouts import get_layout

KINDS = ("slices", "tree", "volumes")

def kind_name(source_kind: str | None) -> str:
    """The kind of a recipe's ``source.kind`` (default ``slices``)."""
    name = source_kind or "slices"
    if name not in KINDS:
        raise ValueError(f"source.kind: found {source_kind!r}, expected one of {KINDS}")
    return name


def get_kind(name: str):
    if name == "slices":
        from pipeline.kinds.slices import KIND
    elif name == "tree":
        from pipeline.kinds.tree import KIND
    elif name == "volumes":
        from pipeline.kinds.volumes import KIND
    else:
        raise ValueError(f"unknown corpus kind {name!r}; known: {KINDS}")
    return KIND


# ------------------------------------------------------------ shared launcher helpers


def load_questions(recipe, pools_loader=None):
    """Template families (filtered by the recipe's ``questions.families``) and pools,
    validated on the launcher."""
    from pipeline.config.recipes import pool_paths, template_paths
    from pipeline.errors import ConfigError
    from pipeline.qa.generators import GENERATORS
    from pipeline.qa.pools import load_pools
    from pipeline.qa.templates import load_families

    families = {}
    for path in template_paths(recipe):
        families.update(load_families(path, generators=GENERATORS))
    wanted = recipe.section("questions").get("families")
    if wanted:
        missing = sorted(set(wanted) - set(families))
        if missing:
            raise ConfigError(
                f"{recipe.path}: questions.families: {missing} not found among {sorted(families)}")
        families = {k: families[k] for k in wanted}
    pools = (pools_loader or load_pools)(pool_paths(recipe))
    return families, pools


def discover_volume_cases(root: str, key: str, layout: str):
    """Cases of a volume input folder and its planned rejects (dead-letter records)."""
    from pipeline.core import keys
    from pipeline.inputs.discovery import discover_cases

    cases, rejected = discover_cases(root, pseudonym_key=key, layout=layout)
    rejects = [{"case_key": keys.pseudonym(key, "case", r.source), "source": r.source,
                "stage": "discover", "reason": r.reason, "error_type": "CaseError",
                "message": r.message, "unit": ""} for r in rejected]
    return cases, rejects


def phantom_input(output: str, folder: str, version: str, log, write) -> str:
    """Write (or reuse) built-in sample inputs under ``OUTPUT/.radvqa/<folder>``."""
    import os

    from pipeline.errors import ConfigError
    from pipeline.schema.layout import STATE_DIR

    if "://" in output:
        raise ConfigError("--input is required when --output is not a local folder")
    root = os.path.join(output, STATE_DIR, folder)
    stamp = os.path.join(root, ".radvqa-sample")
    if os.path.isfile(stamp) and open(stamp).read() == version:
        return root
    log(f"writing the built-in sample inputs to {root}")
    write(root)
    with open(stamp, "w") as f:
        f.write(version)
    return root


class VolumeCases:
    """What the two volume-based kinds (``slices``, ``volumes``) share about their cases,
    planned :class:`~pipeline.inputs.discovery.CaseSource` objects: key, source, JSON form, the
    files that fingerprint a case and its settings digest."""

    case_noun = "case folders"

    @staticmethod
    def case_key(case) -> str:
        return case.key

    @staticmethod
    def case_source(case) -> str:
        return case.source

    @staticmethod
    def case_json(case) -> dict:
        import dataclasses

        return dataclasses.asdict(case)

    @staticmethod
    def case_from_json(d):
        from pipeline.inputs.discovery import CaseSource

        return CaseSource(**{**d, "files": tuple(tuple(f) for f in d["files"])})

    @staticmethod
    def case_paths(case) -> list[str]:
        """Input files and folders whose stat identity fingerprints the case (its layout's
        ``fingerprint_paths``)."""
        return get_layout(case.layout).fingerprint_paths(case)

    @staticmethod
    def settings_digest(settings) -> str:
        from pipeline.core import keys

        return keys.digest(repr(settings))
