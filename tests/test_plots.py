"""forja/plots.py: the loss curve PNG the pipeline logs to MLflow."""

from __future__ import annotations

import json
import struct

from forja.plots import loss_curve_png


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16..24, big-endian), read without matplotlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_loss_curve_png_draws_train_and_val_loss(tmp_path):
    rows = [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.0, "val_loss": 4.2}, {"step": 30, "loss": 3.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a trailing blank line is skipped
    out = loss_curve_png(metrics, tmp_path / "loss_curve.png")
    assert out == tmp_path / "loss_curve.png"
    assert png_size(out.read_bytes()) == (700, 400)  # figsize 7 x 4 inches at 100 dpi


def test_loss_curve_png_without_validation_rows(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 6.0}) + "\n")
    assert png_size(loss_curve_png(metrics, tmp_path / "c.png").read_bytes()) == (700, 400)
