"""Stop signals during training take effect between steps, are never lost, and a second one
stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from grokscope import config as C
from grokscope.store import Run
from grokscope.train.interrupts import deferred_interrupts
from grokscope.train.trainer import Trainer
from tests.conftest import TINY


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C as in a terminal, whatever started the tests (a background job inherits it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_inside_the_block_is_noted_not_raised_and_a_second_one_raises():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with deferred_interrupts() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill returns, on the main thread
        assert stop and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started in the background
    try:
        with deferred_interrupts() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_that_library_code_swallows_still_stops_the_run_at_the_next_step(tmp_path):
    cfg = C.resolve({}, [*TINY, "train.epochs=100", "train.checkpoint_every=20", "train.eval_every=10"])
    run = Run(tmp_path / "r")
    run.write_config(C.to_yaml(cfg))
    seen: list[int] = []

    def ctrl_c_at_30(step, row):  # runs inside the step's evaluation, as a signal would land
        seen.append(step)
        if step == 30:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass  # what an extension does that checks for signals and then clears the error

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, progress=False, callbacks=[ctrl_c_at_30]).fit()
    assert seen == [10, 20, 30]  # the evaluation that was running finished; no step after it
    info = run.read_info()
    assert info["status"] == "interrupted"
    assert run.checkpoint_steps() == [0, 20]  # step 30's checkpoint comes at 40; nothing after the stop
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
