"""The Ray sweep backend: each trial is a Ray task, so the same sweep runs on a laptop or a cluster.

`ray.init(address=...)` joins a running cluster (`--ray-address auto` or `ray://host:10001`);
without an address a local Ray is started with `num_cpus = workers * threads`, room for `workers`
trials at once. Each task asks for as many CPUs as the trial uses torch threads (never more than
the largest node has, or it could never be scheduled) and runs the trial exactly as the local
backend does (as its own process, `grokscope.sweep.worker`), so a crashed trial fails alone and
its folder says why.
On a cluster the sweep folder must be on storage every node sees, and grokscope must be
installed on every node. Ray is optional: `pip install 'grokscope[ray]'`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from grokscope import config as C
from grokscope.store import Run
from grokscope.sweep.local import TrialJob, child_env, run_one

INSTALL_HINT = "--backend ray needs Ray; install it with: pip install 'grokscope[ray]'  (or: pip install 'ray[tune]')"


def require_ray():
    """Import ray or raise ConfigError (exit 2) saying how to install it; before anything is written."""
    try:
        import ray
    except ImportError:
        raise C.ConfigError(INSTALL_HINT) from None
    return ray


def check_address(address: str) -> None:
    """Refuse a host:port (or ray://host:port) address where nothing listens, in seconds.

    Ray's own connection retries wait minutes before they give up on such an address. `auto` and
    other forms are left to `ray.init`.
    """
    target, default_port = (address[len("ray://"):], 10001) if address.startswith("ray://") else (address, 6379)
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, str(default_port)
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise C.ConfigError(f"--ray-address {address}: nothing answers at {host}:{port} "
                            f"({err.strerror or type(err).__name__}); start a cluster there "
                            "(`ray start --head`) or check the address") from None


def run_ray(jobs: list[TrialJob], workers: int, address: str | None = None,
            on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    ray = require_ray()
    if not jobs:  # every trial already finished: no need to start (or join) Ray at all
        return []
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:  # no cluster there, or a bad address
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise C.ConfigError(f"--ray-address {address}: cannot join a Ray cluster ({first}); start one "
                                    f"(`ray start --head`) or check the address") from None
        else:
            env = child_env(1)
            # each task reserves job.threads CPUs: with only `workers` CPUs, threads > workers (e.g.
            # --workers 1 on 2 cores: 2 threads) would leave every task pending forever
            ray.init(num_cpus=workers * max(job.threads for job in jobs), include_dashboard=False,
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}})
    try:
        node_cpus = largest_node_cpus(ray)
        if node_cpus < 1:
            raise C.ConfigError(f"the Ray cluster{f' at {address}' if address else ''} has no node with a CPU to run "
                                "trials on; start its nodes with CPUs (`ray start --num-cpus N`)")
        remote = ray.remote(run_one)
        # a task asking for more CPUs than any node has is never scheduled: cap the reservation
        # (the trial still runs job.threads torch threads; --threads sets those)
        refs = {remote.options(num_cpus=min(job.threads, node_cpus), max_retries=0).remote(job): job for job in jobs}
        results: list[dict[str, Any]] = []
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                try:
                    res = ray.get(ref)
                except Exception as err:  # the Ray task itself died (node lost, worker killed)
                    job = refs[ref]
                    run = Run(job.out)
                    if run.read_info().get("status") in (None, "running"):
                        run.update_info(status="failed", error=f"Ray task failed: {type(err).__name__}: "
                                        f"{str(err).splitlines()[0]}; rerun the sweep to resume it")
                    info = run.read_info()
                    res = {"name": job.name, "returncode": None, "seconds": None, "status": info.get("status"),
                           "error": info.get("error"), "grok_epoch_99": info.get("grok_epoch_99")}
                results.append(res)
                if on_done is not None:
                    on_done(res)
        return results
    finally:
        if started_here:
            ray.shutdown()


def largest_node_cpus(ray) -> int:
    """CPUs of the largest live node: a Ray task runs on one node, so it can ask for at most this."""
    cpus = [node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return int(max(cpus, default=0))


def default_workers() -> int:
    return os.cpu_count() or 1
