"""forja.session's interrupts: one that a finaliser swallowed still stops training, silently."""

import os
import signal
import sys
import time

import pytest
from support import small_configs

from forja import session
from lm.train import train


class SendsCtrlC:
    """Its finaliser is where Ctrl-C lands: Python prints the handler's KeyboardInterrupt as
    "Exception ignored in ..." and carries on, so the interrupt never reaches the loop."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, inside the finaliser


def test_an_interrupt_lost_in_a_finaliser_stops_training_at_the_next_step(token_dir, tmp_path, monkeypatch):
    model, cfg = small_configs(max_steps=20, log_every=1)
    seen, printed = [], []

    def hook(u):  # Python's own prints "Exception ignored in ..." and a traceback
        printed.append(u.exc_type)

    monkeypatch.setattr(sys, "unraisablehook", hook)

    def on_metrics(metrics, step):
        seen.append(step)
        if step == 3:
            SendsCtrlC()  # dropped at once: its __del__ runs here

    with session.interrupts(), pytest.raises(KeyboardInterrupt, match="raised again at step 4"):
        train(
            model,
            cfg,
            token_dir,
            tmp_path / "run",
            on_metrics=on_metrics,
            should_stop=session.reraise_lost_interrupt,
        )
    assert seen == [1, 2, 3]  # the first one was lost: step 4 ran
    assert printed == []  # and not printed as "Exception ignored" with a traceback
    assert sys.unraisablehook is hook  # restored after the block

    with session.interrupts():  # a new block starts with no interrupt pending
        assert session.reraise_lost_interrupt(1) is False
