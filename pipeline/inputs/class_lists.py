"""The built-in class lists of the TotalSegmentator layouts: label value → class name.

``distractor_pools/totalsegmentator_classes.yaml`` holds TotalSegmentator v2's class names
in label order (``ct``: ``class_map["total"]``, 117 names; ``mr``: ``class_map["total_mr"]``,
50 names): position + 1 is the value the tool writes in its ``--ml`` multilabel output.
:mod:`pipeline.inputs.layouts.totalseg_ml` names the values of a multilabel file whose own
class map is absent from this list, and ``radvqa lint`` checks every name of it against the
recipe's pools (:func:`pipeline.qa.lint.class_list_problems`).
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from pipeline.config.resources import resource_path

CLASS_FILE = "totalsegmentator_classes.yaml"


@lru_cache(maxsize=1)
def class_lists() -> dict[str, tuple[str, ...]]:
    """``{"CT": names, "MR": names}`` in label order (label value = position + 1)."""
    with open(resource_path("distractor_pools", CLASS_FILE), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {"CT": tuple(data["ct"]), "MR": tuple(data["mr"])}


def builtin_labels(modality: str) -> dict[int, str]:
    """``{label value: class name}`` of TotalSegmentator's multilabel output for ``modality``."""
    return {value: name for value, name in enumerate(class_lists()[modality], start=1)}
