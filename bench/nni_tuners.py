"""NNI's tuners driven in-process through their tuner API, as ask/tell controllers.

Why an adapter: `bench/controllers.py` drives every method through the same loop (the
search's rules: cost window, cache of known architectures, cap on proposals), so NNI's
tuners must look like ours: `ask()` returns a `controllers.base.Proposal`, `tell()` and
`tell_failure()` report back. No NNI experiment, dispatcher or trial process is
involved: `update_search_space`, `generate_parameters`, `receive_trial_result` only.

The search space given to NNI: one `choice` per decision of the space, over the
indices 0..size-1 (the same decision space our controllers see).

Seeding: NNI's tuners draw from `random`, `numpy.random` and private RandomStates that
they seed from the OS; `seed_all` seeds the first two, and each builder below reseeds
the private ones, so a run is reproducible.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Optional, Sequence

import numpy as np

from controllers.base import Proposal, decision_sizes

TUNERS = ("nni-tpe", "nni-evolution", "nni-regevo", "nni-gp")


# NNI's GP at its defaults costs 4-15 s a proposal here after 40 results (a 100,000-point
# warm-up drawn point by point in Python, 25 restarts of the kernel fit), and its L-BFGS
# refinement fails with this scipy ("'x0' must only have one dimension"). So: no L-BFGS
# (indices are rounded anyway), a 2,000-point warm-up of the acquisition, 2 restarts.
GP_SETTINGS = {"selection_num_starting_points": 0, "selection_num_warm_up": 2000, "gp_restarts": 2}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)


def evolution_sizes(budget: int) -> tuple[int, int]:
    """Population and tournament as our search sizes evolution (`ControllerRecipe.for_run`):
    P ~ budget/3 (4 to 50), S ~ P/3 (2 to 10). Used for NNI's evolution tuners too, so the
    comparison is between algorithms, not between a default sized for 40 and one for 8,000."""
    pop = max(4, min(50, budget // 3))
    return pop, max(2, min(10, pop // 3))


class NniController:
    """One NNI tuner behind ask/tell (sequential use: one proposal in flight at a time is
    enough for the benchmark, which evaluates proposals one by one)."""

    replays_history = False

    def __init__(self, name: str, decisions: Sequence[Any], seed: int, budget: int, **kwargs: Any) -> None:
        logging.getLogger("nni").setLevel(logging.ERROR)
        self.sizes = decision_sizes(decisions)
        self.names = [f"d{i:02d}" for i in range(len(self.sizes))]
        kind = "layer_choice" if name == "nni-regevo" else "choice"  # its only kinds: NAS-style choices
        space = {n: {"_type": kind, "_value": list(range(s))} for n, s in zip(self.names, self.sizes)}
        seed_all(seed)
        self.tuner = _build(name, seed, budget, kwargs)
        self.tuner.update_search_space(space)
        if name == "nni-evolution":  # redraw the initial population from the reseeded state
            self.tuner.random_state = np.random.RandomState(seed)
            self.tuner.population = []
            for _ in range(self.tuner.population_size):
                self.tuner._random_generate_individual()
        elif name == "nni-gp":
            self.tuner._space.random_state = np.random.RandomState(seed)
        self.next_id = 0
        self.params: dict[int, dict] = {}
        self.told_points: set = set()
        self.name = name

    def ask(self) -> Proposal:
        pid = self.next_id
        self.next_id += 1
        params = self.tuner.generate_parameters(pid)
        self.params[pid] = params
        return Proposal(pid, tuple(int(_index(params[n])) for n in self.names))

    def tell(self, proposal: Proposal, reward: float) -> None:
        params = self.params.pop(proposal.id)
        if self.name == "nni-gp":  # its GP refuses no duplicate but fits badly on them: tell each point once
            point = proposal.choices
            if point in self.told_points:
                return
            self.told_points.add(point)
        self.tuner.receive_trial_result(proposal.id, params, float(reward))

    def tell_failure(self, proposal: Proposal, status: str) -> None:
        self.params.pop(proposal.id, None)
        self.tuner.trial_end(proposal.id, False)


def _index(v: Any) -> int:
    """NNI returns a choice's value (our indices), sometimes as a float (GP), or for a
    layer_choice a dict with its index."""
    if isinstance(v, dict):
        return int(v["_idx"])
    return int(round(float(v)))


def _build(name: str, seed: int, budget: int, kwargs: dict) -> Any:
    if name == "nni-tpe":
        from nni.algorithms.hpo.tpe_tuner import TpeTuner
        return TpeTuner(optimize_mode="maximize", seed=seed, **kwargs)
    if name == "nni-evolution":
        from nni.algorithms.hpo.evolution_tuner import EvolutionTuner
        pop, _ = evolution_sizes(budget)
        return EvolutionTuner(optimize_mode="maximize", population_size=kwargs.get("population_size", pop))
    if name == "nni-regevo":
        from nni.algorithms.hpo.regularized_evolution_tuner import RegularizedEvolutionTuner
        pop, sample = evolution_sizes(budget)
        return RegularizedEvolutionTuner(optimize_mode="maximize", population_size=kwargs.get("population_size", pop),
                                         sample_size=kwargs.get("sample_size", sample))
    if name == "nni-gp":
        from nni.algorithms.hpo.gp_tuner.gp_tuner import GPTuner
        kwargs = {**GP_SETTINGS, **kwargs}
        restarts = kwargs.pop("gp_restarts")
        tuner = GPTuner(optimize_mode="maximize", **kwargs)
        tuner._gp.n_restarts_optimizer = restarts
        tuner._random_state = np.random.RandomState(seed)
        tuner._gp.random_state = tuner._random_state
        return tuner
    raise ValueError(f"unknown NNI tuner {name!r}; choose one of: {', '.join(TUNERS)}")


def config(name: str, budget: int) -> Optional[dict]:
    """What the tuner is built with at this budget (for the report; None: NNI's defaults)."""
    if name == "nni-gp":
        return dict(GP_SETTINGS)
    if name in ("nni-evolution", "nni-regevo"):
        pop, sample = evolution_sizes(budget)
        return {"population_size": pop} if name == "nni-evolution" else {"population_size": pop, "sample_size": sample}
    return None
