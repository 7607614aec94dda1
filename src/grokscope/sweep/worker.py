"""The process a sweep starts for each trial (local backend, and inside each Ray task).

    python -m grokscope.sweep.worker CONFIG.yaml RUN_DIR [--threads N]

Exit code 0 when the trial finished, 130 when interrupted (SIGINT or SIGTERM: the run records
"interrupted" and keeps its checkpoints), 1 when it failed (run.json says why).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from grokscope import config as C
from grokscope.sweep.trial import run_trial


def _sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt  # lets the trainer record "interrupted" before the process ends


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM (a scheduler's or `timeout`'s stop) like Ctrl-C: the run records "interrupted"."""
    signal.signal(signal.SIGTERM, _sigterm)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grokscope.sweep.worker")
    ap.add_argument("config", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    interrupt_on_sigterm()
    cfg = C.load(args.config)
    try:
        info = run_trial(cfg, args.out, args.threads)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    print(f"{args.out.name}: {info.get('status')} pid={os.getpid()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
