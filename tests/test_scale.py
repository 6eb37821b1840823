"""Runs of many trials: what the search writes and reads per trial must not grow with the
run (bounded controller checkpoints, history replayed from the store, counts and
indexes), resume stays exact, older stores gain the additions, the Pareto plot copes
with thousands of points. No timing is asserted (bench/scale.py measures)."""
from __future__ import annotations

import random
import sqlite3

import pytest
import torch

from controllers import make
from nas.engines.protocol import EvalContext
from nas.engines.local import LocalEngine
from nas.evaluate.budget import ProxyBudget
from nas.errors import UserError
from nas.search.loop import SearchLoop
from nas.search.recipe import ControllerRecipe
from nas.search.objective import Objective
from nas.search.settings import CostWindow, LoopSettings, StopRule
from nas.store import Checkpoint, Store
from nas.store.codec import decode_state, encode_state
from search_space.space import SearchSpace

SPACE = SearchSpace.default()
WIDE = [4] * 12  # 16.7M choice tuples: 1,000 asks never exhaust it
KW = {"evolution": {"population_size": 20, "sample_size": 5}, "random": {"unique": True}, "rl": {"batch_size": 4}}
CTX = EvalContext(ProxyBudget(), evaluator="tests.fake_evaluators:ok")


def _drive(ctl, n, seed=0):
    """n asks, each told (every 9th as a failure), in a shuffled order of batches of 4."""
    rng = random.Random(seed)
    asked = []
    while len(asked) < n:
        batch = ctl.ask_batch(min(4, n - len(asked)))
        asked += batch
        rng.shuffle(batch)
        for p in batch:
            if p.id % 9 == 4:
                ctl.tell_failure(p, "failed")
            else:
                ctl.tell(p, sum(p.choices) / 40 + rng.random() * 0.01)
    return asked


def _checkpoint_state(ctl):
    return ctl.state_dict(history=False) if ctl.replays_history else ctl.state_dict()


@pytest.mark.parametrize("name", ["random", "evolution", "rl"])
def test_the_checkpointed_state_does_not_grow_with_the_tells(name):
    ctl = make(name, WIDE, seed=0, **KW[name])
    _drive(ctl, 100)
    at_100 = len(encode_state(_checkpoint_state(ctl)))
    _drive(ctl, 900, seed=1)
    at_1000 = len(encode_state(_checkpoint_state(ctl)))
    assert abs(at_1000 - at_100) <= 64, (at_100, at_1000)  # digits of counters and floats only
    if ctl.replays_history:  # the self-contained state is the one that grows: the history
        assert len(encode_state(ctl.state_dict())) > at_1000 + 900 * 20
        assert "seen" not in _checkpoint_state(ctl) and _checkpoint_state(ctl)["seen_count"] == 1000


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_a_history_free_state_resumes_exactly_once_replayed(name):
    key = lambda c: tuple(sorted(c))  # noqa: E731  (merges permutations, as SearchSpace.key merges twins)
    a = make(name, WIDE, seed=3, key_fn=key, **KW[name])
    asked = _drive(a, 150)
    state = decode_state(encode_state(a.state_dict(history=False)))
    expected = [p.choices for p in _drive(a, 120, seed=7)]
    for use_keys in (False, True):
        b = make(name, WIDE, seed=99, key_fn=key, **KW[name])
        b.load_state_dict(state)
        with pytest.raises(RuntimeError, match="replay_history"):
            b.ask()  # without its history it could propose an architecture again
        with pytest.raises(ValueError, match="149 distinct"):
            b.replay_history([p.choices for p in asked[1:]])
        if use_keys:
            b.replay_history((), keys=[key(p.choices) for p in reversed(asked)])
        else:
            b.replay_history([list(p.choices) for p in asked])
        assert [p.choices for p in _drive(b, 120, seed=7)] == expected


def _loop(out, name, trials, create):
    store = Store.create(out, {"t": 1}) if create else Store.open(out)
    loop = SearchLoop(store, SPACE, ControllerRecipe.for_run(name, 0, 200),
                      LoopSettings(Objective(400_000_000), CostWindow(0.0, float("inf")), StopRule(trials=trials)))
    return store, loop


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_a_search_resumed_from_its_store_proposes_what_an_uninterrupted_one_does(tmp_path, name):
    def keys(store):
        return [r["key"] for r in store.trials("search")]
    store, loop = _loop(tmp_path / "whole", name, 90, True)
    LocalEngine(in_process=True).run(loop, CTX)
    whole = keys(store)
    store.close()
    store, loop = _loop(tmp_path / "cut", name, 40, True)
    LocalEngine(in_process=True).run(loop, CTX)
    state = store.checkpoint()[0]
    assert "seen" not in state and state["seen_count"] == 40  # the history is in the store, not here
    store.close()
    store, loop = _loop(tmp_path / "cut", name, 90, False)  # --resume: the history is replayed
    assert loop.controller.seen == {SPACE.key(r["choices"]) for r in store.trials("search")}
    LocalEngine(in_process=True).run(loop, CTX)
    assert keys(store) == whole and len(set(whole)) == 90
    store.close()


def test_a_store_that_disagrees_with_its_checkpoint_is_refused(tmp_path):
    store, loop = _loop(tmp_path / "run", "evolution", 10, True)
    LocalEngine(in_process=True).run(loop, CTX)
    store._conn.execute("DELETE FROM trials WHERE id = 3")  # a record lost outside effnas
    store.close()
    with pytest.raises(UserError, match="does not match the proposals"):
        _loop(tmp_path / "run", "evolution", 20, False)


_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, proposal_id INTEGER NOT NULL,
    choices TEXT, spec TEXT, key TEXT, macs INTEGER, params INTEGER, accuracy REAL, reward REAL,
    status TEXT NOT NULL, message TEXT, epoch_accuracies TEXT, loss REAL, images_per_sec REAL,
    queued_at REAL, started_at REAL, finished_at REAL, wall_time REAL, worker TEXT,
    source TEXT NOT NULL, told INTEGER NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 1, extra TEXT,
    UNIQUE (kind, proposal_id));
CREATE INDEX trials_key ON trials (kind, key);
CREATE TABLE pending (kind TEXT NOT NULL, proposal_id INTEGER NOT NULL, job TEXT NOT NULL,
    queued_at REAL NOT NULL, attempt INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (kind, proposal_id));
CREATE TABLE checkpoints (name TEXT PRIMARY KEY, state BLOB NOT NULL, tells INTEGER NOT NULL,
    asks INTEGER NOT NULL, saved_at REAL NOT NULL);
"""


def test_an_older_store_gains_indexes_counts_and_keeps_its_checkpoint(tmp_path):
    """A store written before these additions (the schema as it was, a full controller
    state with its `seen` list) opens with the index, counts and triggers added, counts
    equal to COUNT(*), and resumes with its own history."""
    out = tmp_path / "old"
    out.mkdir()
    con = sqlite3.connect(out / "search.db")
    con.executescript(_OLD_SCHEMA)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("config", "{}"), ("state", "running")])
    old = make("evolution", SPACE.decisions, seed=0, key_fn=SPACE.key, population_size=8, sample_size=3)
    for pid, p in enumerate(old.ask_batch(6)):
        old.tell(p, 0.5)
        source = "trained" if pid % 3 else "cost-only"
        con.execute("INSERT INTO trials (kind, proposal_id, choices, key, status, source) VALUES (?,?,?,?,?,?)",
                    ("search", p.id, str(list(p.choices)), SPACE.key(p.choices), "ok", source))
    con.execute("INSERT INTO trials (kind, proposal_id, status, source) VALUES ('reference', 0, 'ok', 'trained')")
    con.execute("INSERT INTO checkpoints VALUES ('controller', ?, 6, 6, 0)", (encode_state(old.state_dict()),))
    con.commit()
    con.close()
    with Store.open(out) as st:
        names = {r[0] for r in st._conn.execute("SELECT name FROM sqlite_master")}
        assert {"trials_source", "trial_counts", "trial_counts_insert", "checkpoint_data"} <= names
        assert (st.count("search"), st.count("search", ("cost-only",)), st.count("reference"), st.count_all()) == \
            (4, 2, 1, 7)
        loop = SearchLoop(st, SPACE, ControllerRecipe("evolution", 0, {"population_size": 8, "sample_size": 3}),
                          LoopSettings(Objective(400_000_000), CostWindow(0.0, float("inf")), StopRule(trials=5)))
        assert [p.choices for p in old.ask_batch(3)] == [loop.controller.ask().choices for _ in range(3)]
        st.add_trial({"kind": "search", "proposal_id": 50, "status": "ok", "source": "trained"})
        assert st.count("search") == 5 == st._conn.execute(
            "SELECT COUNT(*) FROM trials WHERE kind='search' AND source='trained'").fetchone()[0]
    with Store.open(out) as st:  # a second open has nothing to add and writes nothing
        before = st._conn.total_changes
        assert st.count("search") == 5 and st._conn.total_changes == before


def test_per_trial_queries_use_an_index_not_a_scan(tmp_path):
    """Without statistics SQLite would answer the cache lookup from (kind, source), a scan
    of every trained trial with each ask; the history read is a range of ids."""
    with Store.create(tmp_path / "run", {}) as st:
        plans = {
            "find_key": "SELECT id FROM trials INDEXED BY trials_key WHERE kind=? AND key=? AND source='trained' "
                        "ORDER BY id LIMIT 1",
            "history": "SELECT id FROM trials NOT INDEXED WHERE id > ? AND kind=? ORDER BY id",
            "count": "SELECT COALESCE(SUM(n), 0) FROM trial_counts WHERE kind=? AND source IN (?)",
        }
        args = {"find_key": ("search", "k"), "history": (0, "search"), "count": ("search", "trained")}
        detail = {k: " ".join(r[-1] for r in st._conn.execute("EXPLAIN QUERY PLAN " + q, args[k]))
                  for k, q in plans.items()}
        assert "USING INDEX trials_key (kind=? AND key=?)" in detail["find_key"]
        assert "INTEGER PRIMARY KEY (rowid>?)" in detail["history"]
        assert "trial_counts" in detail["count"] and "SCAN" not in " ".join(detail.values())


def test_rl_checkpoints_write_the_policy_only_when_it_changes(tmp_path):
    """An ask changes the generator state, not the 1.3 MB of policy and Adam moments:
    those stay in checkpoint_data under their digest until an update replaces them."""
    rl = make("rl", SPACE.decisions, seed=0, batch_size=4)
    with Store.create(tmp_path / "run", {}) as st:
        def write(i):
            st.add_pending("search", i, {}, Checkpoint("controller", rl.state_dict(), rl.n_told, i + 1))
            return {r[0] for r in st._conn.execute("SELECT digest FROM checkpoint_data")}
        for i in range(4):
            rl.tell(rl.ask(), 0.4 + 0.1 * i)  # the 4th tell updates the policy (Adam has moments now)
        p = rl.ask()
        first = write(4)
        rl.tell(p, 0.5)
        again = write(4)
        row = st._conn.execute("SELECT length(state) FROM checkpoints").fetchone()[0]
        assert first == again and len(first) >= 9 and row < 32 * 1024  # the row holds no large tensor
        for i in range(3):
            rl.tell(rl.ask(), 0.4 + 0.1 * i)  # the 8th tell: a second update
        changed = write(8)
        assert rl.n_updates == 2 and not changed & first and len(changed) == len(first)  # old ones dropped
        assert encode_state(st.checkpoint()[0]) == encode_state(rl.state_dict())
        st._conn.execute("UPDATE checkpoint_data SET data = zeroblob(length(data)) "
                         "WHERE rowid = (SELECT MIN(rowid) FROM checkpoint_data)")
        with pytest.raises(UserError, match="damaged"):
            st.checkpoint()


def _stepwise_evaluate(policy, choices):
    """The policy's log-probability and entropy one LSTMCell step and one head at a time
    (what LSTMPolicy.evaluate computed before it was fused)."""
    n = choices.shape[0]
    state, x = None, policy.embedding.weight[0].expand(n, -1)
    logp, entropy = torch.zeros(n), torch.zeros(n)
    for d in range(len(policy.sizes)):
        state = policy.cell(x, state)
        log_probs = torch.log_softmax(policy._logits(d, state[0]), dim=-1)
        logp = logp + log_probs.gather(1, choices[:, d:d + 1]).squeeze(1)
        entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
        x = policy.embedding(policy.offsets[d] + choices[:, d])
    return logp, entropy


def test_rl_fused_evaluate_equals_the_stepwise_policy_with_its_gradients():
    rl = make("rl", SPACE.decisions, seed=1)
    choices = torch.tensor([rl.ask().choices for _ in range(5)])
    grads = []
    for fn in (_stepwise_evaluate, type(rl.policy).evaluate):
        rl.policy.zero_grad()
        logp, entropy = fn(rl.policy, choices)
        (logp.sum() - 0.3 * entropy.sum()).backward()
        grads.append((logp.detach(), entropy.detach(), [p.grad.clone() for p in rl.policy.parameters()]))
    (lp0, en0, g0), (lp1, en1, g1) = grads
    assert torch.allclose(lp0, lp1, atol=1e-4) and torch.allclose(en0, en1, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))
    assert any(a.abs().max() > 0 for a in g0)


def test_rl_runs_its_tiny_ops_on_one_thread_flushing_denormals_and_restores_both():
    from controllers.rl import _flushing_denormals
    seen = []
    rl = make("rl", [3, 2, 3], seed=0, batch_size=2)
    sample = rl.policy.sample
    rl.policy.sample = lambda g: (seen.append((torch.get_num_threads(), _flushing_denormals())), sample(g))[1]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not _flushing_denormals()
        for _ in range(2):
            rl.tell(rl.ask(), 0.5)
        assert seen == [(1, True), (1, True)] and rl.n_updates == 1
        assert torch.get_num_threads() == 2 and not _flushing_denormals()
        assert torch.tensor(1e-39).item() != 0.0  # the caller's arithmetic keeps its denormals
    finally:
        torch.set_num_threads(before)


def test_the_pareto_plot_of_many_trials_is_a_png_with_its_front(tmp_path):
    from nas.reports import files as report
    rng = random.Random(0)
    rows = []
    for i in range(6000):
        macs = int(50e6 * 30 ** rng.random())
        rows.append({"id": i, "kind": "search", "source": "trained" if i % 10 else "cost-only",
                     "status": "ok" if i % 97 else "failed", "macs": macs,
                     "accuracy": 0.3 + 0.5 * rng.random() if i % 97 else None})
    ok = [r for r in rows if r["source"] == "trained" and r["status"] == "ok"]
    front = report.pareto_front(ok)
    assert [r["macs"] for r in front] == sorted(r["macs"] for r in front)
    assert all(a["accuracy"] < b["accuracy"] for a, b in zip(front, front[1:]))
    assert not any(o["macs"] <= f["macs"] and o["accuracy"] > f["accuracy"] for f in front for o in ok)
    best = max(ok, key=lambda r: r["accuracy"])
    report.plot_pareto(rows, tmp_path / "pareto.png", 400_000_000, -0.07, -0.07, {**best, "reward": 0.8},
                       None, (0.5, 1.0))
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoding_and_decoding_a_state_leave_no_reference_cycle():
    """A cycle per checkpoint (a recursive closure) kept each one's 1.3 MB of tensor
    bytes until the cyclic GC ran: RSS grew 160 MB over 20,000 RL proposals."""
    import gc
    state = make("rl", SPACE.decisions, seed=0).state_dict()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            decode_state(encode_state(state))
        assert gc.collect() == 0
    finally:
        gc.enable()
