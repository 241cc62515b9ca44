"""The bit-exact numeric core: fixed-point grids, integer tables, exact Adam.

ENGINES names each engine (version -> record of its parameters); an archive
records the one its model runs on, and a decoder refuses an archive whose
record it does not know.
"""
from .grid import ENGINE, ENGINE2, ENGINES  # noqa: F401  (torch-free: see grid.py)
