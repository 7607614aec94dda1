"""A numba `njit` whose kernels run the code numba's cache holds, in every process.

Why: numba compiles a parallel kernel's loop body as a library of its own and loads it into the
compiling process, then links a re-optimised copy into the kernel, which is what its cache
stores. The compiling process keeps calling the first copy, so with fastmath the process that
compiled a kernel can round differently from every later process that loads it from the cache.
Compiling each new signature in a child process, and loading it from the cache here, makes a first
run after install bit-identical to every later one (tests/test_cold_cache.py).
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numba
from numba import njit
from numba.core import sigutils
from numba.core.caching import Cache
from numba.core.dispatcher import Dispatcher

# Every kernel runs the code that numba's cache holds, also in the process that compiles it: a new
# signature is compiled in a child process, which writes the cache, and then loaded from it here.
# Compiled here, a parallel kernel would run other code than the cache holds. numba compiles each
# prange body (its parfor gufunc) as a library of its own and loads it into the process's JIT
# engine, then links a copy of it into the kernel's library and optimises that whole library again.
# The cache stores the kernel's object code, with the re-optimised copy; the compiling process's
# JIT resolves the kernel's calls of the body (weak symbols) to the first loaded definition, the
# separately compiled one. With fastmath (reassoc, contract) the two copies can sum in a different
# order: cross_entropy_rows's float64 row sums did (one mainline loss in 1,024 differed by 31 ulp
# at step 97, a float32 gradient entry at step 517), so a mainline run whose kernels were compiled
# in it drifted from one that loaded them, and a killed and resumed first run did not end where an
# uninterrupted one would. One child serves a process's compilations (numba's start-up, paid once
# per process, is most of a small kernel's compile time: a child per kernel made the first run 20 s
# longer, this one about 2 s) and exits when idle for a while or when its parent does.
# GROKSCOPE_KERNELS_COMPILE_HERE=1 compiles in-process, numba's own behaviour; so does a process
# whose child fails or cannot write the cache, with a warning: its results may then differ in the
# last bits from those of runs that load the cache.
_COMPILE_HERE = "GROKSCOPE_KERNELS_COMPILE_HERE"
_IDLE_S = 60  # the compiling child exits after this long without a request
_CHILD = """\
import importlib, os, pickle, select, sys
if sys.argv[1] == "1":
    import torch  # as in the parent, before numba's OpenMP layer starts (above)
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
while select.select([sys.stdin], [], [], float(sys.argv[2]))[0]:
    try:
        module, name, sig = pickle.load(sys.stdin.buffer)
    except EOFError:  # the parent has gone
        break
    try:
        getattr(importlib.import_module(module), name).compile(sig)
        reply = None
    except BaseException as e:
        reply = repr(e)
    try:
        pickle.dump(reply, out)
        out.flush()
    except BrokenPipeError:  # the parent has gone
        break
"""
_child: subprocess.Popen | None = None
_child_pid = 0  # the process that started _child (a fork must start its own)
_child_lock = threading.Lock()


def kernel(options: dict):
    """njit(**options), with new signatures compiled in a child process (see _COMPILE_HERE)."""

    def wrap(f):
        disp = njit(**options)(f)
        if isinstance(disp, Dispatcher):  # not a plain function, as under NUMBA_DISABLE_JIT
            disp.compile = functools.partial(_compile, disp, disp.compile)
        return disp

    return wrap


def _compile(disp, compile_here, sig):
    """The dispatcher's compile(sig), numba's own after the child has compiled and cached sig."""
    if os.environ.get(_COMPILE_HERE) or sys.platform == "win32" or _loadable(disp, sig):  # (no select on pipes)
        return compile_here(sig)
    failure = _compile_in_child(disp, sig)
    if failure is None and not _loadable(disp, sig):
        failure = "the child compiled it but the cache does not hold it"
    entry = compile_here(sig)  # loads what the child cached (or, failing that, compiles here)
    if failure is not None:
        warnings.warn(f"{disp.py_func.__name__} compiled in this process ({failure}): its results may "
                      "differ in the last bits from a run that loads it from numba's cache", stacklevel=2)
    return entry


def _loadable(disp, sig) -> bool:
    """Whether compile(sig) would not compile: sig is loaded already, or in the cache's index (or
    there is no cache, so a child could not help)."""
    try:
        args, _ = sigutils.normalize_signature(sig)
        if tuple(args) in disp.overloads:
            return True
        cache = disp._cache
        if not isinstance(cache, Cache) or not cache._enabled:
            return True
        return cache._index_key(sig, disp.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # another numba's internals: its own behaviour
        return True


def _compile_in_child(disp, sig) -> str | None:
    """Have the child compile disp for sig, which writes numba's cache; None if it did, else why
    not. A child that has exited (idle) is replaced, once."""
    global _child, _child_pid
    try:
        request = pickle.dumps((disp.py_func.__module__, disp.py_func.__name__, sig))
    except Exception as e:
        return f"the signature does not pickle: {e!r}"
    with _child_lock:
        for attempt in (0, 1):
            if _child is None or _child_pid != os.getpid() or _child.poll() is not None:
                if _child is not None and _child_pid == os.getpid():
                    _close_child()
                try:
                    _child, _child_pid = _start_child(), os.getpid()
                except OSError as e:
                    return f"no child: {e!r}"
            try:
                _child.stdin.write(request)
                _child.stdin.flush()
                return pickle.load(_child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                _close_child()
                if attempt:
                    return f"the child failed: {e!r}"
    raise AssertionError("not reached")


def _start_child() -> subprocess.Popen:
    src = str(Path(__file__).resolve().parents[2])  # where this package is imported from
    env = {**os.environ, _COMPILE_HERE: "1", "NUMBA_THREADING_LAYER": str(numba.config.THREADING_LAYER),
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    env.pop("NUMBA_CACHE_DIR", None)  # this process's cache, which numba read when imported
    if numba.config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    argv = [sys.executable, "-c", _CHILD, "1" if "torch" in sys.modules else "0", str(_IDLE_S)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def _close_child() -> None:
    """End this process's child: EOF on its input, then a kill if it has not exited."""
    global _child
    child, _child = _child, None
    for pipe in (child.stdin, child.stdout):
        try:
            pipe.close()  # the child's EOF
        except OSError:
            pass
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@atexit.register
def _stop_child() -> None:
    if _child is not None and _child_pid == os.getpid():
        _close_child()
