"""The engine-neutral loop (cost window, cache, exact resume) and the local worker engine
(isolation: exceptions, NaN, hangs and dying workers become records; completion order)."""
import dataclasses
import math

import pytest

import controllers
from controllers.base import Controller, Ledger
from nas.evaluate.budget import ProxyBudget
from nas.engines.evaluator import evaluate_job
from nas.engines.protocol import EvalContext
from nas.search.batch import BatchSource
from nas.search.loop import SearchLoop
from nas.search.objective import Objective
from nas.search.settings import CostWindow, LoopSettings, StopRule
from nas.engines.local import LocalEngine, device_slots, threads_per_worker
from nas.store import Store
from search_space import cost, zoo
from search_space.space import SearchSpace
from tests import fake_evaluators as fe

T = 400_000_000
SPACE = SearchSpace.default()


def _ctx(evaluator="tests.fake_evaluators:ok"):
    return EvalContext(ProxyBudget(), evaluator=evaluator)


def _loop(path, trials=6, controller=None, window=(0.5, 1.0), reference=None):
    store = Store.open(path) if Store.is_run(path) else Store.create(path, {})
    ctrl = controller or controllers.make("random", SPACE.decisions, seed=3, key_fn=SPACE.key)
    return SearchLoop(store, SPACE, ctrl, LoopSettings(Objective(T), CostWindow(*window), StopRule(trials=trials)),
                      reference=reference)


class Scripted(Controller):
    """Proposes a fixed list of choice tuples; remembers what it was told."""

    def __init__(self, script):
        super().__init__(SPACE.decisions)
        self.script, self.i, self.ledger, self.told = list(script), 0, Ledger(), []

    def ask(self):
        self.i += 1
        return self.ledger.issue(self.script[self.i - 1])

    def tell(self, proposal, reward):
        self.ledger.settle(proposal)
        self.told.append((proposal.id, reward))

    def tell_failure(self, proposal, status):
        self.ledger.settle(proposal)
        self.told.append((proposal.id, status))

    def state_dict(self):
        return {"i": self.i, "ledger": self.ledger.state_dict(), "told": list(self.told)}

    def load_state_dict(self, state):
        self.i, self.told = state["i"], list(state["told"])
        self.ledger.load_state_dict(state["ledger"])


def _choices_with_macs(lo, hi, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    while True:
        c = tuple(SPACE.sample(rng))
        m = cost.macs(SPACE.decode(c, num_classes=1000, resolution=224), 224)
        if lo * T <= m <= hi * T:
            return c, m


def test_cost_window_and_cache_are_told_but_not_trained(tmp_path):
    a, _ = _choices_with_macs(0.5, 1.0, seed=1)
    big, big_macs = _choices_with_macs(1.5, 50, seed=2)
    b, _ = _choices_with_macs(0.5, 1.0, seed=3)
    ctrl = Scripted([a, a, big, b])
    loop = _loop(tmp_path, trials=2, controller=ctrl)
    LocalEngine(in_process=True).run(loop, _ctx())
    rows = loop.store.trials("search")
    assert [r["source"] for r in rows] == ["trained", "cache", "cost-only", "trained"]
    assert loop.store.count("search") == 2  # only trained trials count toward --trials
    assert rows[1]["reward"] == rows[0]["reward"] and rows[1]["accuracy"] == rows[0]["accuracy"]
    assert rows[2]["status"] == "skipped" and rows[2]["accuracy"] is None
    assert rows[2]["reward"] == pytest.approx(cost_only_reward(big_macs, T, 0.1))
    assert rows[2]["reward"] < 0.1 and "cost window" in rows[2]["message"]
    # every proposal was told exactly once, with what was recorded
    assert ctrl.told == [(r["proposal_id"], r["reward"]) for r in sorted(rows, key=lambda r: r["proposal_id"])]


@pytest.mark.parametrize("restart", ["none", "both-in-flight", "after-the-first-record"])
def test_an_architecture_in_flight_is_not_trained_twice(tmp_path, restart):
    """A proposal of an architecture being trained right now waits for that result and is
    told it (source 'cache'), also across a restart at any point."""
    a, _ = _choices_with_macs(0.5, 1.0, seed=1)
    b, _ = _choices_with_macs(0.5, 1.0, seed=3)
    loop = _loop(tmp_path, trials=2, controller=Scripted([a, a, b]))
    first, second = loop.next_job(), loop.next_job()
    assert (first.proposal_id, second.proposal_id) == (0, 2)  # proposal 1 (a again) waits for 0
    if restart == "both-in-flight":  # killed with both training: the twin waits again after resume
        loop.store.close()
        loop = _loop(tmp_path, trials=2, controller=Scripted([a, a, b]))
        assert sorted(j.proposal_id for j in loop.initial_jobs()) == [0, 2]
    if restart == "after-the-first-record":  # killed between a's record and its twin's
        def die(rec):
            if rec["proposal_id"] == 0:
                raise KeyboardInterrupt
        loop.listeners.append(die)
        with pytest.raises(KeyboardInterrupt):
            loop.complete(first, evaluate_job(first, _ctx()))
        loop.store.close()
        loop = _loop(tmp_path, trials=2, controller=Scripted([a, a, b]))
        assert [j.proposal_id for j in loop.initial_jobs()] == [2]  # the twin was told from the record
        loop.complete(second, evaluate_job(second, _ctx()))
    else:
        for job in (second, first):
            loop.complete(job, evaluate_job(job, _ctx()))
    rows = loop.store.trials("search")
    assert sorted((r["proposal_id"], r["source"]) for r in rows) == [(0, "trained"), (1, "cache"), (2, "trained")]
    by_id = {r["proposal_id"]: r for r in rows}
    assert by_id[1]["reward"] == by_id[0]["reward"] and by_id[1]["key"] == by_id[0]["key"]
    assert loop.store.count("search") == 2 and loop.store.pending() == [] and loop.done
    assert sorted(loop.controller.told) == sorted((r["proposal_id"], r["reward"]) for r in rows)


def test_resume_with_more_trials_lifts_the_cap_on_proposals(tmp_path):
    a, _ = _choices_with_macs(0.5, 1.0, seed=1)
    big, _ = _choices_with_macs(1.5, 50, seed=2)
    script = [big, big, a]

    def loop(cap):
        store = Store.open(tmp_path) if Store.is_run(tmp_path) else Store.create(tmp_path, {})
        return SearchLoop(store, SPACE, Scripted(script), LoopSettings(Objective(T), stop=StopRule(trials=1, max_proposals=cap)))
    first = loop(2)
    LocalEngine(in_process=True).run(first, _ctx())
    assert first.done and first.stop_reason and first.store.count("search") == 0
    first.store.close()
    again = loop(3)  # e.g. resumed with a larger --trials, so a larger cap
    assert not again.done
    LocalEngine(in_process=True).run(again, _ctx())
    assert again.store.count("search") == 1 and not again.stop_reason and again.done
    assert again.store.get_meta("stop_reason") == ""


def cost_only_reward(macs: int, target: int, chance: float) -> float:
    return Objective(target).cost_only_reward(macs, None, chance)


def test_cost_only_reward_rises_toward_the_target():
    assert cost_only_reward(T // 4, T, 0.1) < cost_only_reward(T // 2, T, 0.1) < 0.1
    assert cost_only_reward(4 * T, T, 0.1) < cost_only_reward(2 * T, T, 0.1) < 0.1


def test_resume_after_a_crash_continues_exactly(tmp_path):
    """Crash the parent mid-search (evaluator raises KeyboardInterrupt-like abort), resume
    with a fresh controller from the store: the same trials as an uninterrupted run."""
    ref = _loop(tmp_path / "ref", trials=8)
    LocalEngine(in_process=True).run(ref, _ctx())
    expected = [(r["proposal_id"], r["key"], r["reward"]) for r in ref.store.trials("search")]

    Abort = KeyboardInterrupt  # evaluate_job turns every other exception into a record

    calls = {"n": 0}

    def flaky(spec, budget):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Abort()  # escapes like a kill would
        return fe.ok(spec, budget)

    run = _loop(tmp_path / "run", trials=8)
    with pytest.raises(Abort):
        LocalEngine(in_process=True).run(run, EvalContext(ProxyBudget(), evaluator=flaky))
    assert run.store.count("search") == 4 and len(run.store.pending()) == 1
    run.store.close()
    again = _loop(tmp_path / "run", trials=8)  # new controller object, state from the store
    LocalEngine(in_process=True).run(again, _ctx())
    got = [(r["proposal_id"], r["key"], r["reward"]) for r in again.store.trials("search")]
    assert got == expected
    assert again.store.pending() == [] and again.done


def test_failures_are_isolated_and_recorded(tmp_path):
    b0 = zoo.get("efficientnet-b0")
    names = ["raise", "nan", "hang", "exit", "ok", "sleep0.2"]
    specs = [dataclasses.replace(b0, name=n) for n in names]
    store = Store.create(tmp_path, {})
    src = BatchSource(store, specs, Objective(T))
    engine = LocalEngine(["cpu", "cpu"], trial_timeout=1.5)
    engine.run(src, _ctx("tests.fake_evaluators:by_name"))
    res = dict(zip(names, src.results()))
    assert res["raise"].status == "failed" and "injected failure" in res["raise"].message
    assert res["nan"].status == "diverged"
    assert res["hang"].status == "timeout"
    assert res["exit"].status == "failed" and "worker process died" in res["exit"].message
    assert res["ok"].status == "ok" and math.isclose(res["ok"].accuracy, fe.accuracy_of(b0.key()))
    assert res["sleep0.2"].status == "ok"
    assert engine.replaced == 2  # the hung and the exited worker were replaced
    assert src.done and engine.workers == []


class _DeadOnArrival(LocalEngine):
    """Spawns whose number is in `dead` start a worker that dies before it is ready."""

    def __init__(self, *args, dead=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.spawns, self.dead = 0, dead

    def _spawn(self, index, ctx):
        import os

        from nas.engines.local import _Worker

        self.spawns += 1
        if self.spawns not in self.dead:
            return super()._spawn(index, ctx)
        parent, child = self.mp.Pipe()
        proc = self.mp.Process(target=os._exit, args=(3,), daemon=True)
        proc.start()
        child.close()
        return _Worker(name=f"cpu-{index}", device="cpu", proc=proc, conn=parent)


def test_one_startup_death_after_many_replacements_is_not_fatal(tmp_path):
    b0 = zoo.get("efficientnet-b0")
    specs = [dataclasses.replace(b0, name="exit", dropout=0.01 * i) for i in range(12)] + [b0]
    src = BatchSource(Store.create(tmp_path, {}), specs, Objective(T))
    engine = _DeadOnArrival(["cpu"], dead={13})  # the replacement after the 12th death dies at start
    engine.run(src, _ctx("tests.fake_evaluators:by_name"))
    statuses = [r.status for r in src.results()]
    assert statuses == ["failed"] * 12 + ["ok"] and engine.replaced == 13


def test_workers_that_keep_dying_at_startup_stop_the_run(tmp_path):
    from nas.engines.local import EngineError

    src = BatchSource(Store.create(tmp_path, {}), [zoo.get("efficientnet-b0")], Objective(T))
    engine = _DeadOnArrival(["cpu"], dead=range(1, 100))
    with pytest.raises(EngineError, match="keep dying at start-up"):
        engine.run(src, _ctx())
    assert engine.spawns == 12 and engine.workers == []


def test_results_arrive_in_completion_order(tmp_path):
    b0 = zoo.get("efficientnet-b0")
    specs = [dataclasses.replace(b0, name=n) for n in ("sleep1.5", "sleep0", "sleep0.1", "sleep0")]
    store = Store.create(tmp_path, {})
    src = BatchSource(store, specs, Objective(T))
    LocalEngine(["cpu", "cpu"]).run(src, _ctx("tests.fake_evaluators:by_name"))
    rows = store.trials()
    order = [r["proposal_id"] for r in rows]
    assert order[-1] == 0 and sorted(order) == [0, 1, 2, 3]
    slow = rows[-1]
    # the three quick ones were recorded while the slow one still ran on the other worker
    assert all(r["finished_at"] < slow["started_at"] + 1.5 for r in rows[:-1])
    assert {r["worker"] for r in rows[:-1]} == {w for w in ("cpu-0", "cpu-1") if w != slow["worker"]}


def test_pool_and_inline_engines_train_the_same_architectures(tmp_path):
    a = _loop(tmp_path / "a", trials=6, reference=zoo.get("efficientnet-b0"))
    LocalEngine(in_process=True).run(a, _ctx())
    b = _loop(tmp_path / "b", trials=6, reference=zoo.get("efficientnet-b0"))
    LocalEngine(["cpu", "cpu"]).run(b, _ctx())
    keys = lambda lp: sorted(r["key"] for r in lp.store.trials("search", "trained"))  # noqa: E731
    assert keys(a) == keys(b) and len(keys(a)) == 6
    for lp in (a, b):
        ref = lp.store.trial("reference", 0)
        assert ref["told"] is False and ref["status"] == "ok"


def test_slots_and_threads():
    assert device_slots("cpu", 3) == ["cpu"] * 3
    assert device_slots("cuda", 0, 2, gpus=[0, 1]) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert device_slots("cuda", 3, 1, gpus=[0, 1]) == ["cuda:0", "cuda:1", "cuda:0"]
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(8, cores=2) == 1
