"""Ctrl-C and SIGTERM during training take effect between two steps.

Python raises KeyboardInterrupt at whatever bytecode runs when the signal arrives. Inside a
compiled extension that checks for signals and then clears the error, the interrupt is lost and
the run trains on as if nobody had asked (seen here about once in 20 stops); between the two
writes of a checkpoint it can leave the run's bookkeeping half done. So while the loop runs, the
two signals only set a flag that the loop reads once a step. A second signal raises at once, for
a step that does not end.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Truthy once a stop signal has arrived; `signum` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded request instead of raising (a second
    one raises KeyboardInterrupt). Signals the process ignores stay ignored; off the main thread,
    where Python cannot install handlers, nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def note(signum: int, frame: object) -> None:  # noqa: ARG001
        if request:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, note)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
