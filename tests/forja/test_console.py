"""A flow-run process whose console (the worker's pipes) is gone goes on, its output in a file."""

import subprocess
import sys

import pytest

CHILD = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")  # before the wrap
from forja.console import survive_closed_console
survive_closed_console(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()  # the parent has closed our stdout and stderr's reader by now
for i in range(50):
    print(f"line {i}")
    logging.getLogger("forja.pipeline").info("log line %d", i)
sys.stdout.flush()
print("the end")
"""


@pytest.mark.slow
def test_output_after_a_broken_pipe_goes_to_the_file_and_the_process_ends_well(tmp_path):
    fallback = tmp_path / "logs" / "console.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(fallback)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.stdout.close()  # the worker is gone: nobody reads the pipe
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    text = fallback.read_text()
    assert "is gone (BrokenPipeError" in text
    assert "line 49\n" in text and "log line 49\n" in text and text.endswith("the end\n")


def test_without_a_broken_pipe_nothing_is_written_aside(tmp_path):
    fallback = tmp_path / "console.log"
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(fallback)], input="go\n", capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "line 49" in r.stdout and "log line 49" in r.stderr
    assert not fallback.exists()
