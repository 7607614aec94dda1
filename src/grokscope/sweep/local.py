"""The local sweep backend: trials as child processes, at most `workers` at once.

Each trial runs as `python -m grokscope.sweep.worker` in its own process (not a pool worker), so a
trial that crashes, runs out of memory or is killed ends alone: the scheduler notes it in the
trial's `run.json` and carries on with the others. Torch threads per trial = cores // workers,
so the trials share the machine instead of oversubscribing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grokscope
from grokscope.store import Run, atomic_write_text

POLL_SECONDS = 0.1


@dataclass
class TrialJob:
    """What a backend needs to run one trial: its resolved config file and its run folder."""

    name: str
    config_path: Path
    out: Path
    log_path: Path
    threads: int


def threads_per_trial(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // workers)


def child_env(threads: int) -> dict[str, str]:
    """The child sees this very grokscope (even when it was imported from a source tree)."""
    env = dict(os.environ)
    src = str(Path(grokscope.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def command(job: TrialJob) -> list[str]:
    return [sys.executable, "-m", "grokscope.sweep.worker", str(job.config_path), str(job.out),
            "--threads", str(job.threads)]


def start(job: TrialJob) -> subprocess.Popen:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(command(job), stdout=log, stderr=subprocess.STDOUT, env=child_env(job.threads))
    # atomic: whoever reads the pid (to stop the trial) never sees an empty or half-written file
    try:
        atomic_write_text(job.log_path.with_suffix(".pid"), f"{proc.pid}\n")
    except BaseException:  # e.g. disk full: no trial may run on that nobody tracks or can stop
        proc.kill()
        proc.wait()
        raise
    return proc


def finish(job: TrialJob, returncode: int, seconds: float) -> dict[str, Any]:
    """Record how a trial process ended; a killed process could not write that itself."""
    run = Run(job.out)
    info = run.read_info() if run.info_path.exists() else {}
    if returncode != 0 and info.get("status") in (None, "running"):
        if returncode < 0:
            sig = signal.Signals(-returncode).name
            info = run.update_info(status="interrupted", error=f"trial process killed by {sig}; rerun the sweep to resume it "
                                   f"(log: {job.log_path})")
        else:
            info = run.update_info(status="failed", error=f"trial process exited with code {returncode}; see {job.log_path}")
    return {"name": job.name, "returncode": returncode, "seconds": seconds, "status": info.get("status"),
            "error": info.get("error"), "grok_epoch_99": info.get("grok_epoch_99")}


def run_one(job: TrialJob) -> dict[str, Any]:
    """Run one trial process to its end (used by the Ray backend inside a Ray task)."""
    t0 = time.perf_counter()
    proc = start(job)
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return finish(job, rc, time.perf_counter() - t0)


def run_local(jobs: list[TrialJob], workers: int, on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every job, at most `workers` at once; returns one result per job, in finishing order."""
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[TrialJob, float]] = {}
    results: list[dict[str, Any]] = []
    # SIGTERM to the sweep must stop its trials too (by default Python would exit at once and
    # leave them running as orphans): turn it into KeyboardInterrupt, handled below.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main else None
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                running[start(job)] = (job, time.perf_counter())
            time.sleep(POLL_SECONDS)
            for proc in [p for p in running if p.poll() is not None]:
                job, t0 = running.pop(proc)
                res = finish(job, proc.returncode, time.perf_counter() - t0)
                results.append(res)
                if on_done is not None:
                    on_done(res)
    except BaseException:
        # The sweep itself was interrupted: stop the children so each records "interrupted".
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc, (job, t0) in running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            finish(job, proc.returncode, time.perf_counter() - t0)
        raise
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    return results


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt
