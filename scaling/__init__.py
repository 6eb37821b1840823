"""Compound scaling (EfficientNet): B0 -> B1..B7, and the α/β/γ grid search.

Imports `search_space` only; the grid search takes an evaluate function and knows
nothing about training. The CLI (`python -m scaling`) is the one place that reaches
into `nas`, lazily, for `grid`.
"""
from .compound import (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, PUBLISHED, FamilyMember, derive_family,
                       family_rows, parse_phis, published_family, round_filters, round_repeats,
                       round_resolution, scale)
from .errors import ScalingError
from .family import derive_to_dir, family_members
from .grid import GridResult, candidate_spec, grid_candidates, grid_search, save_grid_table

__all__ = [
    "PAPER_ALPHA", "PAPER_BETA", "PAPER_GAMMA", "PUBLISHED", "FamilyMember", "GridResult", "ScalingError",
    "candidate_spec", "derive_family", "derive_to_dir", "family_members", "family_rows", "grid_candidates",
    "grid_search", "parse_phis", "published_family", "round_filters", "round_repeats", "round_resolution",
    "save_grid_table", "scale",
]
