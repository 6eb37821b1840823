"""The shape of `nas/`: imports run one way (no cycle, no private name taken from another
module), the engine protocol declares what engines use, and every command that owns a run
folder takes its lock and gives it back."""
import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.cli.final import main as final_main
from nas.cli.proxy import main as proxy_main
from nas.cli.search import main as search_main
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
NAS = ROOT / "nas"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in NAS.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict) -> tuple[set[str], list[str]]:
    """(modules of nas that `name` imports, private names it takes from another module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nas"):
                continue
            for a in node.names:
                if f"{target}.{a.name}" in mods:
                    out.add(f"{target}.{a.name}")
                else:
                    out.add(target)
                    if a.name.startswith("_") and not a.name.startswith("__") and target != name:
                        private.append(f"{name} imports {target}.{a.name}")
    return {m for m in out if m in mods and m != name}, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_imports_inside_nas_have_no_cycle_and_take_no_private_name():
    mods = _modules()
    graph, private = {}, []
    for name, path in mods.items():
        graph[name], p = _imports(name, path, mods)
        private += p
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert private == []


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    fake = tmp_path / "m.py"
    fake.write_text("from nas.search.loop import _secret\n")
    _, private = _imports("nas.x", fake, {"nas.search.loop": fake, "nas.x": fake})
    assert private == ["nas.x imports nas.search.loop._secret"]


def test_the_flow_runs_one_way_between_the_sub_packages():
    """cli -> final/proxy -> search -> engines -> evaluate/store: nothing below imports above
    (nni's tuner, which hosts the search loop in NNI's dispatcher, may import search; a
    package's `__main__`, which nothing imports, is an entry point that calls its command)."""
    order = {"cli": 5, "final": 4, "proxy": 4, "search": 3, "reports": 3, "nni": 2, "engines": 2, "supernet": 2,
             "evaluate": 1, "store": 1}
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        here = name.split(".")[1] if name.count(".") else None
        if here not in order or name.endswith(".__main__"):
            continue
        for target in _imports(name, path, mods)[0]:
            there = target.split(".")[1] if target.count(".") else None
            if there in order and order[there] > order[here] and not (here == "nni" and there == "search"):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_the_engine_protocol_declares_rung_and_both_sources_answer_it():
    from nas.engines.protocol import JobSource
    from nas.search.batch import BatchSource
    from nas.search.loop import SearchLoop
    assert "rung" in JobSource.__dict__
    for source in (BatchSource, SearchLoop):
        assert callable(source.rung)
    for path in (NAS / "engines" / "local.py", NAS / "nni" / "tuner.py"):
        assert 'getattr(source, "rung"' not in path.read_text() and 'getattr(self.source' not in path.read_text()


# -- the run folder's lock --------------------------------------------------------------------
FAST = ["--evaluator", "tests.fake_evaluators:ok", "--device", "cpu", "--no-tensorboard", "--no-scale", "--quiet",
        "--target-flops", "400M", "--controller", "random", "--workers", "1"]


def _can_lock(folder: Path) -> bool:
    """Whether another process can take the folder's lock now."""
    code = "import sys; from nas.store import lock; lock.acquire(sys.argv[1])"
    return subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True).returncode == 0


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from nas.store import lock; lock.acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_search_and_nas_final_give_their_lock_back(tmp_path):
    run = tmp_path / "run"
    assert search_main(FAST + ["--trials", "4", "--final-top-k", "1", "--final-seeds", "2", "--out", str(run)]) == 0
    assert _can_lock(run)
    final_main([str(run), "--seeds", "3", "--quiet", "--no-progress"])
    assert _can_lock(run)   # stage 2 run in this process gave the lock back


def test_extending_stage2_with_other_workers_time_limit_or_device_trains_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert search_main(FAST + ["--trials", "4", "--final-top-k", "2", "--final-seeds", "2", "--out", str(run)]) == 0
    with Store.open(run) as st:
        before = [(r["id"], r["proposal_id"]) for r in st.trials("final")]
    assert len(before) == 3 * 2  # 2 candidates and the reference, 2 seeds each
    capsys.readouterr()
    for extra in (["--workers", "2"], ["--trial-timeout", "77"], ["--device", "auto"]):
        final_main([str(run), "--quiet", "--no-progress"] + extra)
        with Store.open(run) as st:
            assert [(r["id"], r["proposal_id"]) for r in st.trials("final")] == before, extra
    final_main([str(run), "--quiet", "--no-progress", "--final-epochs", "3"])  # another budget: measured anew
    with Store.open(run) as st:
        assert len(st.trials("final")) == 2 * len(before)


@pytest.mark.parametrize("command", ["search", "final", "proxy"])
def test_a_busy_run_folder_is_refused_with_one_line(tmp_path, capsys, command):
    run = tmp_path / "run"
    if command == "final":
        assert search_main(FAST + ["--trials", "2", "--no-final", "--out", str(run)]) == 0
    capsys.readouterr()
    holder = _hold_lock(run)
    try:
        t0 = time.time()
        if command == "search":
            code = search_main(FAST + ["--trials", "2", "--out", str(run)])
        elif command == "final":
            code = final_main([str(run), "--quiet"])
        else:
            code = proxy_main(["check", "--quick", "--target-flops", "400M", "--evaluator",
                               "tests.fake_evaluators:ok", "--scores", "none", "--device", "cpu", "--out", str(run)])
        err = capsys.readouterr().err.strip()
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and "in use by pid" in err and len(err.splitlines()) == 1, err
    assert time.time() - t0 < 30
    assert not Store.is_run(run) or command == "final"  # nothing was created behind the lock
