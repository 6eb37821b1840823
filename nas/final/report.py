"""Stage 2's outputs: final.md (the table and the verdict in words) and final.csv (one row per run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.evaluate.budget import ProxyBudget
from nas.search.objective import Objective

from .plan import seed_of
from .stats import POWER, SEEDS_CAP

CSV_COLUMNS = ("label", "trial", "key", "macs", "params", "seed", "status", "val_accuracy", "test_accuracy",
               "val_reward", "test_reward", "latency_ms", "measured_latency_ms")


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"


def verdict_line(summary: dict) -> str:
    v = summary["verdict"]
    if v is None:
        return "stage 2: no verdict (B0 or the reference has fewer than 2 test scores)"
    design = summary.get("design") or {}
    if design.get("looks"):
        rows = summary["candidates"]
        n = min(rows[summary["chosen"]]["runs"], rows[summary["reference"]]["runs"])
        how = (f"sequential, {n} fresh seeds each for B0 and the reference, look {design['look']} of at most "
               f"{len(design['looks'])}, boundary p < {v['threshold']:.3g}")
    else:
        how = f"{len(summary['seeds'])} fresh seeds"
    line = (f"verdict on test ({how}): B0 ({v['b0']}) vs {v['reference']}: "
            f"{v['diff']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] 95% CI, Welch p = {v['p']:.3g}: "
            f"{v['words']}, at {v['macs_ratio']:.0%} of its multiply-adds{_latency_ratio(summary)}")
    if design.get("looks") and v["words"] == "no significant difference":
        line += f", undecided at the cap of {design['looks'][-1]} seeds"
    if v["words"] == "no significant difference" and v["diff"] != 0:
        n = v.get("seeds_to_tell")
        line += (f"; a true gap of {abs(v['diff']):.4f} would be found {POWER:.0%} of the time with "
                 + (f"{n} seeds each (python -m nas.final RUN --seeds {n})" if n else f"more than {SEEDS_CAP} seeds each"))
    return line


def _latency_ratio(summary: dict) -> str:
    """`, 27% of its measured latency` (predicted where nothing was measured), with a latency target."""
    rows = {c["label"]: c for c in summary["candidates"]}
    b0, ref = rows[summary["verdict"]["b0"]], rows[summary["verdict"]["reference"]]
    for key, word in (("measured_latency_ms", "measured"), ("latency_ms", "predicted")):
        if b0.get(key) and ref.get(key):
            return f" and {b0[key] / ref[key]:.0%} of its {word} latency"
    return ""


def markdown(summary: dict, budget: ProxyBudget) -> str:
    lines = [f"# Stage 2: {len(summary['candidates'])} architectures x seeds {summary['seeds']}",
             "",
             f"Final budget: {budget.dataset}, {budget.epochs:g} epochs at {budget.resolution} px, batch "
             f"{budget.batch_size}. B0 is chosen by mean reward on search-validation; test accuracy is read "
             "only for the verdict." + _design_text(summary),
             "",
             "| architecture | MACs | params | runs ok | search-val accuracy | val reward | test accuracy | "
             "test reward |",
             "|---|---|---|---|---|---|---|---|"]
    latency = any(c.get("latency_ms") is not None for c in summary["candidates"])
    if latency:  # beside MACs: predicted (the table) / measured end to end (B0 and the reference)
        lines[-2] = lines[-2].replace("| MACs |", "| MACs | latency predicted / measured |")
        lines[-1] += "---|"
    for i, c in enumerate(summary["candidates"]):
        mark = " (B0)" if i == summary["chosen"] else ""
        lat = f" {_ms(c.get('latency_ms'))} / {_ms(c.get('measured_latency_ms'))} |" if latency else ""
        lines.append(f"| {c['label']}{mark} | {_m(c['macs'])} |{lat} {_m(c['params'])} | {c['ok']}/{c['runs']} | "
                     f"{_pm(c['val'])} | {_f(c['val_reward'])} | {_pm(c['test'])} | {_f(c['test_reward'])} |")
    lines += ["", verdict_line(summary), ""]
    return "\n".join(lines)


def _design_text(summary: dict) -> str:
    design = summary.get("design") or {}
    if not design.get("looks"):
        return ""
    return (f" Sequential seeds: every candidate on seeds {summary['seeds']} (B0 chosen there), then B0 and "
            f"the reference only, at looks of {', '.join(map(str, design['looks']))} seeds, until Welch's p is below "
            f"{design['threshold']:.3g} (Pocock's boundary, calibrated by simulation so that a false 'better' or "
            f"'worse' over all looks has a 5 % chance).")


def _m(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}M"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_outputs(summary: dict, out: str | Path, budget: ProxyBudget, objective: Objective) -> None:
    """final.csv (one row per run) and final.md (the table and the verdict), atomically."""
    import csv
    import io

    from search_space.fileio import write_atomic

    by_key = {c["key"]: c for c in summary["candidates"]}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in summary["records"]:
        c = by_key[r["key"]]
        val, test, lat = r["accuracy"], r.get("test_accuracy"), r.get("latency_ms")
        w.writerow([c["label"], "" if c["trial"] is None else c["trial"], r["key"], r["macs"], r["params"],
                    seed_of(r), r["status"], _cell(val), _cell(test),
                    _cell(objective.reward(val, r["macs"], lat) if val is not None else None),
                    _cell(objective.reward(test, r["macs"], lat) if test is not None else None),
                    _cell(lat), _cell(c.get("measured_latency_ms"))])
    write_atomic(Path(out) / "final.csv", buf.getvalue())
    write_atomic(Path(out) / "final.md", markdown(summary, budget))


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.6g}"
