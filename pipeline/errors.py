"""Error types.

* :class:`ConfigError` — bad configuration (recipe, template, pool): stops the
  launch, names the file and the field.
* :class:`CaseError` — bad data in one case: never stops a build; the case
  goes to the dead-letter output with ``stage``, ``reason`` (a short
  machine-readable slug such as ``geometry.mismatch``), ``message`` (what was
  attempted, where, the value found and the value expected) and ``path``
  (the offending file, relative to the input root).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid recipe, template family or distractor pool."""


class BuildFailed(RuntimeError):
    """The pipeline failed on every attempt (a worker died, or an error outside cases)."""


class CaseError(Exception):
    """A case that cannot be turned into corpus rows."""

    def __init__(self, stage: str, reason: str, message: str, path: str = "") -> None:
        super().__init__(f"{stage}: {path + ': ' if path else ''}{message}")
        self.stage = stage
        self.reason = reason
        self.message = message
        self.path = path

    def __reduce__(self):  # keep picklable across Beam workers
        return (type(self), (self.stage, self.reason, self.message, self.path))

    def with_path(self, path: str) -> CaseError:
        """The same error, naming ``path`` if it named no file yet."""
        return self if self.path else CaseError(self.stage, self.reason, self.message, path)
