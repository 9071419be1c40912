"""Configuration as data: recipes, JSON-Schema validation, the resource folders.

See docs/architecture.md for the data flow and the rules of the house.
"""
