"""How to build a controller, as plain data: a controller object cannot travel to another
process (NNI's dispatcher), a recipe can."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


REFIT_PER = 50  # the predictor refits at least 50 times per run (every tell at first: controllers/predictor.py)


@dataclass
class ControllerRecipe:
    """How to build a controller, as plain data (a controller object cannot travel)."""

    name: str
    seed: int = 0
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def for_run(cls, name: str, seed: int, trials: int, target: int | None = None,
                cost_window: Sequence[float] | None = None, target_resolution: int = 224) -> "ControllerRecipe":
        """The search's sizing: evolution's population ~ trials/3, tournament ~ population/3;
        the predictor's random start ~ trials/4 (5 to 20), its refits at most every
        trials/50 tells beyond 500 trials (a fit costs ~90 ms, as much as scoring a
        sub-network with inherited weights: docs/supernet.md), and the cost window in
        multiply-adds (when `target` and `cost_window` are given) so that it can skip
        candidates the search would not train."""
        kwargs: dict[str, Any] = {}
        if name == "evolution":
            pop = max(4, min(50, trials // 3))
            kwargs = dict(population_size=pop, sample_size=max(2, min(10, pop // 3)))
        elif name == "predictor":
            kwargs = dict(initial_random=max(5, min(20, trials // 4)))
            if trials // REFIT_PER > 10:  # thousands of cheap evaluations (one-shot): a fit every trials/50 tells
                kwargs["refit_cap"] = trials // REFIT_PER
            if target is not None and cost_window is not None:
                kwargs.update(cost_window_macs=[float(cost_window[0]) * target, float(cost_window[1]) * target],
                              target_resolution=int(target_resolution))
        return cls(name, int(seed), kwargs)

    def build(self, space: Any) -> Any:
        """The controller over `space`'s decisions; de-duplicating by the space's key where
        the controller supports it (and, for the predictor, costing candidates with the
        analytic multiply-adds at the target resolution). ValueError for an unknown name
        or bad kwargs."""
        import controllers
        kwargs = dict(self.kwargs)
        if self.name in ("evolution", "random", "predictor"):
            kwargs["key_fn"] = space.key
        if self.name == "predictor" and "cost_window_macs" in kwargs:
            from search_space import cost
            res = int(kwargs.pop("target_resolution", 224))
            kwargs["window"] = tuple(kwargs.pop("cost_window_macs"))
            kwargs["cost_fn"] = lambda c: cost.macs(space.decode(list(c), num_classes=1000, resolution=res), res)
        return controllers.make(self.name, space.decisions, seed=self.seed, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ControllerRecipe":
        return cls(str(data["name"]), int(data.get("seed", 0)), dict(data.get("kwargs") or {}))
