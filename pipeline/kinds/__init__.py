"""Corpus kinds (slices, tree, volumes) behind the declared Kind protocol, and their registry.

See docs/architecture.md for the data flow and the rules of the house.
"""
