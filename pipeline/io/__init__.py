"""The corpus on disk: the shard writer and the one corpus reader.

See docs/architecture.md for the data flow and the rules of the house.
"""
