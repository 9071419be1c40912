"""Questions: templates and their sandbox, generators, balancing, pools, lint and the shortcut audit.

See docs/architecture.md for the data flow and the rules of the house.
"""
