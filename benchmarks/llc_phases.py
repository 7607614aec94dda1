"""Where the local learning coefficient turns, beside the paper's phase boundaries, run by run.

For each analysed run with an `llc` table (`grokscope analyze RUN --llc`) it prints:
- the epoch of the LLC's peak;
- its value at the end of memorisation (the phases' first boundary, by the run's phase rule);
- the first epoch after the peak where it falls below 10% of that value ("falls");
- the first epoch where it is within 2x of its final value ("floor");
beside the run's circuit-formation and cleanup boundaries and its grokking epoch (99% test
accuracy). Reads runs only.

    python benchmarks/llc_phases.py runs/mainline runs/seeds
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pandas as pd


def runs_below(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        cands = [p] if (p / "metrics.sqlite").is_file() else sorted(p.glob("*/metrics.sqlite"))
        out += [c if c.is_dir() else c.parent for c in cands]
    return out


def turns(run: Path) -> dict | None:
    with sqlite3.connect(run / "metrics.sqlite") as con:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "llc" not in names:
            return None
        llc = pd.read_sql("select epoch, llc from llc order by epoch", con)
        metrics = pd.read_sql("select epoch, test_acc from metrics order by epoch", con)
    s = json.loads((run / "analysis" / "summary.json").read_text())
    ph = s["phases"]
    mem_end, circ_end, clean_end = ph["memorization"][1], ph["circuit_formation"][1], ph["cleanup"][1]
    peak = llc.loc[llc["llc"].idxmax()]
    after = llc[llc["epoch"] >= mem_end]
    at_mem = float(after["llc"].iloc[0])
    past_peak = llc[llc["epoch"] > peak["epoch"]]
    falls = past_peak.loc[past_peak["llc"] < 0.1 * at_mem, "epoch"]
    final = float(llc["llc"].iloc[-1])
    floor = llc.loc[(llc["epoch"] > peak["epoch"]) & (llc["llc"] <= 2 * final), "epoch"]
    grok = metrics.loc[metrics["test_acc"] > 0.99, "epoch"]
    return {"run": run.name, "peak": (float(peak["epoch"]), float(peak["llc"])), "mem_end": mem_end, "at_mem": at_mem,
            "falls": float(falls.iloc[0]) if len(falls) else None, "circ_end": circ_end,
            "floor": float(floor.iloc[0]) if len(floor) else None, "clean_end": clean_end,
            "grok": float(grok.iloc[0]) if len(grok) else None, "final": final}


def fmt(v: float | None) -> str:
    return "never" if v is None else f"{v:,.0f}"


def main(argv: list[str]) -> None:
    rows = [t for r in runs_below([Path(a) for a in argv]) if (t := turns(r)) is not None]
    print("| run | LLC peak (epoch: value) | memorisation ends | LLC there | LLC < 10% of it | circuit formation ends "
          "| LLC at its floor | cleanup ends | 99% test accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in rows:
        print(f"| {t['run']} | {fmt(t['peak'][0])}: {t['peak'][1]:.3g} | {fmt(t['mem_end'])} | {t['at_mem']:.3g} | "
              f"{fmt(t['falls'])} | {fmt(t['circ_end'])} | {fmt(t['floor'])} (final {t['final']:.2g}) | "
              f"{fmt(t['clean_end'])} | {fmt(t['grok'])} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/mainline", "runs/seeds"])
