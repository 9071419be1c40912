"""The thin Beam shell: DoFns and one PTransform around the engine (the only Beam code besides the launcher).

See docs/architecture.md for the data flow and the rules of the house.
"""
