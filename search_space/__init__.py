"""The MnasNet factorized hierarchical search space over MBConv blocks.

Imports no training code: specs, the space, the analytic cost model and the builder.
"""
from .decisions import Decision
from .errors import SpecError
from .spec import ArchSpec, BlockSpec
from .space import SearchSpace

__all__ = ["ArchSpec", "BlockSpec", "Decision", "SearchSpace", "SpecError"]
