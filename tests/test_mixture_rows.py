"""The mixture coder's CDF rows are filled in one pass over many rows (coding/mixture_coder.py);
each row must hold exactly what computing it alone gives, whichever rows are filled together."""
from __future__ import annotations

import numpy as np
import torch

from osoa_zip.coding.logistic_coder import OFFSET_STEPS
from osoa_zip.coding.mixture_coder import REACH, _ComponentRows
from osoa_zip.exact.logistic import CDF_RANGE
from osoa_zip.models.registry import load_model


def row_alone(rows: _ComponentRows, row: int) -> np.ndarray:
    """One row by its definition, edge by edge over the core, the table's ends outside it."""
    low_end, high_end = rows.tables.cdf[0].item(), rows.tables.cdf[-1].item()
    inv_scale = rows.inv_scale[row % rows.scale_rows]
    reach = int(np.ceil(CDF_RANGE / inv_scale)) + 2
    first, last = max(0, REACH - reach), min(rows.WIDTH, REACH + reach + 1)
    offset = ((row // rows.scale_rows) + 0.5) / OFFSET_STEPS - 0.5
    edges = np.arange(rows.WIDTH, dtype=np.float64) - REACH - 0.5
    u = (edges[first:last] - offset) * inv_scale
    core = np.where(u <= -CDF_RANGE, low_end, np.where(u >= CDF_RANGE, high_end, 0.0))
    inner = np.abs(u) < CDF_RANGE
    core[inner] = rows.tables.cdf_q24(torch.from_numpy(u[inner])).numpy()
    expected = np.full(rows.WIDTH, high_end, dtype=np.int64)
    expected[:first] = low_end
    expected[first:last] = core
    return expected


def test_rows_filled_together_are_the_rows_computed_alone():
    rows = _ComponentRows(load_model("idf-sublattice-v7").network(3).tables)
    count = rows.filled.size
    rng = np.random.default_rng(3)
    wanted = [rng.choice(count, 700, replace=False), np.array([0, count - 1, 5, 5, 5]), np.arange(count)]
    for chosen in wanted:
        rows.ensure(chosen)
    assert rows.filled.all()
    for row in [0, count - 1, *rng.choice(count, 200, replace=False)]:
        assert np.array_equal(rows.cdf[row], row_alone(rows, int(row))), row
