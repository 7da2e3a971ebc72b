"""Progress lines: an estimated total can be overrun, the line must still read sensibly."""

import logging

from tasks.common import Progress


def test_progress_never_passes_100_percent_and_eta_never_goes_negative(caplog):
    caplog.set_level(logging.INFO, logger="forja.progress")
    p = Progress("tokenize", total=100, unit="MB", every_s=0.0)
    p.update(50)
    p.update(59)  # 109 of an estimated 100
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert "tokenize: 50/100 MB, 50.0%" in lines[0]
    assert all("100.9%" not in line and "109.0%" not in line for line in lines)
    assert "tokenize: 109/100 MB, 100.0%, eta 0s" in lines[-1]
    assert not any("eta -" in line for line in lines)
