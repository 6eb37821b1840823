"""Handing a job source to another process: NNI's tuner runs the search's decisions inside
NNI's dispatcher. A source describes itself as plain data (`handover()`: the space as YAML,
the controller as a `ControllerRecipe`, the settings), and `source_from_handover` builds an
equal one there on the same store; the controller's state comes from the store's checkpoint.
"""
from __future__ import annotations

from typing import Any

from nas.store.store import Store

from .batch import BatchSource
from .loop import SearchLoop
from .objective import Objective
from .recipe import ControllerRecipe
from .settings import LoopSettings


def source_from_handover(state: dict, store: Store) -> Any:
    """The source a `handover()` describes, on `store` (no listeners: this process's
    records reach the launching process's listeners through the store)."""
    from search_space.space import SearchSpace
    from search_space.spec import ArchSpec

    if not isinstance(state, dict) or state.get("type") not in ("search", "batch"):
        raise ValueError(f"not a job-source handover: {str(state)[:80]!r}")
    if state["type"] == "batch":
        return BatchSource(store, [ArchSpec.from_dict(s) for s in state["specs"]], Objective(**state["objective"]),
                           kind=state["kind"], target_resolution=state.get("target_resolution"),
                           overrides=state.get("overrides"), ids=state.get("ids"),
                           weights=state.get("weights"))
    space = SearchSpace.from_yaml_text(state["space"], source="the handed-over search space")
    settings = LoopSettings.from_dict(state["settings"])
    reference = ArchSpec.from_dict(state["reference"]) if state.get("reference") else None
    return SearchLoop(store, space, ControllerRecipe.from_dict(state["controller"]), settings, reference=reference)
