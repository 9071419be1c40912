"""Work units and what a worker does with one: extract, render, write, record dead letters.

See docs/architecture.md for the data flow and the rules of the house.
"""
