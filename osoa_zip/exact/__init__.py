"""The bit-exact numeric core: fixed-point grids, integer tables, exact Adam.

ENGINE names this core and its parameters; archives record it, and a decoder
refuses an archive written by a different engine.
"""
from .grid import ENGINE  # noqa: F401  (torch-free: see grid.py)
