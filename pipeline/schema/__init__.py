"""What the corpus is made of: Arrow schemas, output paths and shard names, cross-module records.

See docs/architecture.md for the data flow and the rules of the house.
"""
