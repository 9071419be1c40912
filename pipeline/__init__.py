"""radvqa: a deterministic, distributed corpus builder for radiology VQA.

The package is a functional core (pure modules that never import Apache Beam)
wrapped by a thin Beam shell (:mod:`pipeline.beam.transforms`) and a launcher
(:mod:`pipeline.launch.build`, :mod:`pipeline.cli`).
"""

__version__ = "0.1.0"
