"""The run's record of truth: the SQLite store (`store`), its tables (`schema`), the
checkpoint codec (`codec`) and the one-owner lock of a run folder (`lock`)."""
from .store import Checkpoint, Store

__all__ = ["Checkpoint", "Store"]
