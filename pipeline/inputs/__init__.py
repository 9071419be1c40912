"""Inputs: the input tree, case discovery, layouts, readers, and the built-in samples.

See docs/architecture.md for the data flow and the rules of the house.
"""
