"""The launcher: plan, run, finalise, card and summary of a build.

See docs/architecture.md for the data flow and the rules of the house.
"""
