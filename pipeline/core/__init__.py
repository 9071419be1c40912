"""The pure core: numpy functions for keys, geometry, slices, boxes, images and artefacts (no Beam, no I/O).

See docs/architecture.md for the data flow and the rules of the house.
"""
