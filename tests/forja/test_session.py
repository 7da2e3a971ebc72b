"""forja.session: an interrupt that a finaliser swallowed still stops training, silently; the
temporary server's warm-up request ends once the server answers or dies."""

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import free_port, small_configs

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


def test_the_warm_up_request_is_sent_once_when_the_server_answers_even_with_an_error():
    """Any answer means the server has built its routes: not retried (a server with an auth
    string answers 401 to every request; polled, that was 10 requests a second for 2 minutes)."""
    hits = []

    class Answers401(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers401)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        t0 = time.monotonic()
        session._first_request(alive, f"http://127.0.0.1:{server.server_port}/api")
        assert time.monotonic() - t0 < 5
        assert hits == ["/api/admin/version"]
    finally:
        alive.kill()
        alive.wait()
        server.shutdown()


def test_the_warm_up_request_gives_up_when_the_server_process_ends():
    port = free_port()  # nothing listens there: refused until the process ends
    dies = subprocess.Popen(["sleep", "0.5"])
    t0 = time.monotonic()
    session._first_request(dies, f"http://127.0.0.1:{port}/api")
    assert 0.4 < time.monotonic() - t0 < 5
    dies.wait()
