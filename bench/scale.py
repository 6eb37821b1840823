"""Scale: does the search's cost per trial stay flat from 1,000 to 20,000 trials?

For each controller (random, evolution, rl), with an evaluator that does no work
(`flat_evaluate` below) and the cost window 0..inf (every new proposal is trained),
a search of N proposals (N trials for random and evolution, which never repeat; RL
repeats, see `child_search`) runs through the real pieces a user runs: the options
parsed and validated by `nas.search` (so the store is one `--resume` accepts), `nas.search.loop.SearchLoop`
with the CLI's recipe (`ControllerRecipe.for_run`) and settings, a `nas.store.store.Store`, and
the CLI's listeners (`Progress(enabled=False)`, `nas.cli.runs.refresh_files`:
trials.csv and best.yaml). Engines: `LocalEngine(in_process=True)` and the pool with one
worker process. Each search runs in a process of its own, so its peak RSS is its own.

Reported for every (controller, engine, N): ms a trial (wall / N; the first and the last
tenth of the trials separately), peak RSS; per (controller, engine): the growth
exponent (least-squares slope of log wall against log N: 1 is flat per trial, 2 is
quadratic) and the ratios against the smallest N, the baseline measured in the same
run. Then, on the largest in-process store of each controller: `python -m nas.search
--resume` with 20 trials more, timed from its process start to its first new trial
record (the store's `finished_at`); `--keep DIR` keeps those run folders (pareto.png).
And TensorBoard: `nas.reports.tb.TBLogger`'s cost per record over the first and the last
thousand of N records.

Goals (issue "20,000 trials without slowing down"): <= 5 ms a trial at 20,000 for
random and evolution, <= 15 ms for RL; exponent <= 1.1; RSS at 20,000 <= 1.5x RSS at
1,000; resume within 5 s.

    python bench/scale.py [--quick] [--json] [--sizes 1000,5000,20000]
                          [--controllers random,evolution,rl] [--engines inproc,pool] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVALUATOR = "bench.scale:flat_evaluate"
GOAL_MS = {"random": 5.0, "evolution": 5.0, "rl": 15.0, "predictor": 50.0}
GOAL_EXPONENT, GOAL_RSS_RATIO, GOAL_RESUME_S = 1.1, 1.5, 5.0
RESUME_MORE = 20


def flat_evaluate(spec, budget):
    """No work; an accuracy drawn uniformly from [0.4, 0.6) anew with every call, so that
    no architecture is better than another. Why not a constant (`tests.fake_evaluators:
    noop`): the reward then depends on MACs alone, RL learns the one cheapest network
    within a few hundred trials and proposes nothing but cached repeats of it (571
    trials took 19,156 proposals), which measures the cache, not 20,000 trials."""
    import random

    from nas.evaluate.result import TrialResult
    return TrialResult(status="ok", accuracy=0.4 + 0.2 * random.random())


def cli_args(controller: str, trials: int, out: str) -> list[str]:
    """The command line whose options the bench's searches use (and `--resume` reads back)."""
    return ["--target-flops", "400M", "--controller", controller, "--trials", str(trials), "--seed", "0",
            "--cost-window", "0,inf", "--evaluator", EVALUATOR, "--device", "cpu", "--workers", "1",
            "--reference", "none", "--no-tensorboard", "--no-scale", "--no-final", "--quiet", "--no-progress",
            "--out", out]


def _rss_mb() -> float:
    """Resident set size now, MB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def child_search(controller: str, n: int, engine: str, out: str) -> dict:
    """One search of `n` proposals in this process; its figures as a dict.

    The loop stops after n trained trials or n proposals (`max_proposals`), whichever
    comes first: random and evolution never repeat, so that is n trials; RL learns the
    network with the fewest MACs (the reward's only signal here) and then mostly
    proposes it again (records from the cache, told but not trained), so its n are
    proposals, each an ask, a tell, a record and two checkpoints, as for a trial."""
    import dataclasses

    from nas.cli import options as cfg
    from nas.cli.runs import refresh_files
    from nas.cli.setup import validate
    from nas.reports.progress import Progress
    from nas.engines.local import LocalEngine
    from nas.search.loop import SearchLoop
    from nas.store import Store

    opts, given = cfg.parse(cli_args(controller, n, out))
    setup = validate(opts, given, None)
    settings = dataclasses.replace(setup.settings, stop=dataclasses.replace(setup.settings.stop, max_proposals=n))
    record = cfg.for_record({k: v for k, v in opts.items() if not k.startswith("_")})
    store = Store.create(out, record)
    stamps: list[float] = []
    listeners = [Progress(n, enabled=False), refresh_files(store, Path(out), setup),
                 lambda rec: stamps.append(time.perf_counter())]
    loop = SearchLoop(store, setup.space, setup.recipe, settings, listeners=listeners)
    t0 = time.perf_counter()
    LocalEngine(["cpu"], in_process=engine == "inproc").run(loop, setup.ctx)
    wall = time.perf_counter() - t0
    trained = store.count("search")
    records = store.count("search", ("trained", "cache", "cost-only"))
    store.close()
    assert records == n and len(stamps) == n, (records, len(stamps), n)
    tenth = max(1, n // 10)
    first = (stamps[tenth - 1] - t0) / tenth
    last = (stamps[-1] - stamps[-1 - tenth]) / tenth
    return {"controller": controller, "engine": engine, "proposals": n, "trained": trained,
            "cached": records - trained, "wall_s": round(wall, 3), "ms_per_proposal": round(1000 * wall / n, 3),
            "first_tenth_ms": round(1000 * first, 3), "last_tenth_ms": round(1000 * last, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mb": round(_rss_mb(), 1)}


def child_tb(records: int, out: str) -> dict:
    """TBLogger's cost per record, first and last thousand of `records`."""
    from nas.reports.tb import TBLogger
    tb = TBLogger(out)
    k = min(1000, max(1, records // 10))
    times = []
    for i in range(1, records + 1):
        rec = {"id": i, "kind": "search", "source": "trained", "status": "ok", "reward": 0.5 + 1e-6 * i,
               "accuracy": 0.5, "macs": 3e8, "params": 4e6, "wall_time": 0.01}
        t = time.perf_counter()
        tb(rec)
        times.append(time.perf_counter() - t)
    tb.close()
    return {"records": records, "first_ms": round(1000 * sum(times[:k]) / k, 4),
            "last_ms": round(1000 * sum(times[-k:]) / k, 4)}


def run_child(kind: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench child {kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def resume_seconds(controller: str, out: str) -> dict:
    """`python -m nas.search --resume` of the store in `out`, asking RESUME_MORE trained
    trials more: seconds from its process start to its first new record (polled in the
    store, read-only), and to its end. A resume still running 15 s after its first record
    (RL, which mostly proposes cached repeats: see `child_search`) is stopped with SIGTERM
    (the CLI's Ctrl-C path: it keeps the store and writes the reports)."""
    import signal
    import sqlite3

    def query(sql: str, *args: object) -> tuple:
        con = sqlite3.connect(f"file:{out}/search.db?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchone()
        finally:
            con.close()
    last_id, = query("SELECT MAX(id) FROM trials")
    trained, = query("SELECT COUNT(*) FROM trials WHERE kind='search' AND source='trained'")
    records, = query("SELECT COUNT(*) FROM trials WHERE kind='search'")
    more = max(trained + RESUME_MORE, (records - 100) // 50 + 1 + RESUME_MORE)  # past the proposal cap
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "nas.search", "--resume", *cli_args(controller, more, out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None and (first is None or time.time() < first + 15):
        time.sleep(0.05)
        if first is None:
            first, = query("SELECT MIN(finished_at) FROM trials WHERE id > ?", last_id)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1].decode()
    wall = time.time() - t0
    # -SIGTERM: the signal came after the run had left its handler (finishing, exiting)
    if proc.returncode not in (0, 130, -signal.SIGTERM):
        raise SystemExit(f"--resume of {out} failed ({proc.returncode}):\n{err[-3000:]}")
    first, = query("SELECT MIN(finished_at) FROM trials WHERE id > ?", last_id)
    new, = query("SELECT COUNT(*) FROM trials WHERE id > ?", last_id)
    assert first is not None and new > 0, err[-2000:]
    return {"controller": controller, "proposals": records, "first_new_record_s": round(first - t0, 3),
            "resume_process_s": round(wall, 3), "new_records": new, "completed": proc.returncode == 0}


def exponent(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(wall) against log(N)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(w) for _, w in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 and 1,000 trials (CI)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    ap.add_argument("--sizes", help="comma-separated trial counts (default 1000,5000,20000; quick 200,1000)")
    ap.add_argument("--controllers", default="random,evolution,rl")
    ap.add_argument("--engines", help="inproc and/or pool (default both; quick: pool for evolution only)")
    ap.add_argument("--keep", help="copy the largest stores' run folders (pareto.png, trials.csv) here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        figures = child_search(rest[0], int(rest[1]), rest[2], rest[3]) if kind == "search" else \
            child_tb(int(rest[0]), rest[1])
        print(json.dumps(figures))
        return 0

    sizes = sorted(int(s) for s in (a.sizes or ("200,1000" if a.quick else "1000,5000,20000")).split(","))
    if len(sizes) < 2 or sizes[0] < 10:
        ap.error("--sizes needs at least two sizes of 10 trials or more")
    names = [c for c in a.controllers.split(",") if c]
    if any(c not in GOAL_MS for c in names):
        ap.error(f"--controllers: choose from {', '.join(GOAL_MS)}")
    engines = [e for e in (a.engines or "inproc,pool").split(",") if e]
    if any(e not in ("inproc", "pool") for e in engines):
        ap.error("--engines: inproc and/or pool")
    started = time.time()
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_avg_1m']} at the start")
    tmp = Path(tempfile.mkdtemp(prefix="effnas-scale-"))
    runs, series, resumes = [], {}, []
    try:
        for name in names:
            for engine in engines:
                if a.quick and not a.engines and engine == "pool" and name != "evolution":
                    continue
                for n in sizes:
                    out = tmp / f"{name}-{engine}-{n}"
                    r = run_child("search", name, str(n), engine, str(out))
                    runs.append(r)
                    series.setdefault(f"{name}/{engine}", []).append(r)
                    base = series[f"{name}/{engine}"][0]
                    what = "trials" if r["cached"] == 0 else f"proposals ({r['trained']} trained, {r['cached']} cached)"
                    print(f"{name:9s} {engine:6s} {n:6d} {what}: {r['ms_per_proposal']:6.2f} ms each "
                          f"({r['ms_per_proposal'] / base['ms_per_proposal']:.2f}x of {base['proposals']}; first "
                          f"tenth {r['first_tenth_ms']:.2f}, last tenth {r['last_tenth_ms']:.2f}), peak RSS "
                          f"{r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x)", flush=True)
                    if n != sizes[-1] or engine != engines[0]:
                        shutil.rmtree(out, ignore_errors=True)
            big = tmp / f"{name}-{engines[0]}-{sizes[-1]}"
            r = resume_seconds(name, str(big))
            resumes.append(r)
            print(f"{name:9s} --resume of {sizes[-1]} proposals: first new record {r['first_new_record_s']:.2f} s "
                  f"after the process started (goal <= {GOAL_RESUME_S:g} s); the resume took "
                  f"{r['resume_process_s']:.1f} s{'' if r['completed'] else ' (stopped with SIGTERM)'}", flush=True)
            if a.keep:
                dest = Path(a.keep) / big.name
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(big, dest)
            shutil.rmtree(big, ignore_errors=True)
        tb = run_child("tb", str(sizes[-1]), str(tmp / "tb"))
        print(f"TensorBoard: {tb['first_ms']:.3f} ms a record over the first thousand, {tb['last_ms']:.3f} ms "
              f"over the last ({tb['last_ms'] / tb['first_ms']:.2f}x) of {tb['records']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for key, rows in series.items():
        name, engine = key.split("/")
        first, last = rows[0], rows[-1]
        s = {"exponent": round(exponent([(r["proposals"], r["wall_s"]) for r in rows]), 3),
             "ms_at_largest": last["ms_per_proposal"],
             "ms_vs_smallest": round(last["ms_per_proposal"] / first["ms_per_proposal"], 3),
             "rss_vs_smallest": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)}
        ms_ok = engine == "pool" or last["proposals"] < 20000 or last["ms_per_proposal"] <= GOAL_MS[name]
        s["goals_met"] = bool(s["exponent"] <= GOAL_EXPONENT and s["rss_vs_smallest"] <= GOAL_RSS_RATIO and ms_ok)
        summary[key] = s
        print(f"{key:16s} growth exponent {s['exponent']:.3f} (goal <= {GOAL_EXPONENT}); at {last['proposals']}: "
              f"{s['ms_vs_smallest']:.2f}x the ms and {s['rss_vs_smallest']:.2f}x the peak RSS of "
              f"{first['proposals']} (goals: <= {GOAL_MS[name]:g} ms in-process at 20,000, <= {GOAL_RSS_RATIO}x RSS)")
    figures = {"machine": info, "sizes": sizes, "runs": runs, "summary": summary, "resume": resumes,
               "tensorboard": tb, "goals": {"ms_each_at_20000": GOAL_MS, "exponent": GOAL_EXPONENT,
                                            "rss_ratio": GOAL_RSS_RATIO, "resume_s": GOAL_RESUME_S},
               "load_avg_1m_end": round(os.getloadavg()[0], 2), "bench_wall_s": round(time.time() - started, 1)}
    if a.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
