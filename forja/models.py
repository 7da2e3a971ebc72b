"""Find a trained model from what a user types: a run folder, a checkpoint folder, or an MLflow URI."""

from __future__ import annotations

from lm.checkpoint import LoadedModel, load_for_inference


def load_model_ref(ref: str, device: str = "cpu") -> LoadedModel:
    """Load a model for inference from a run folder or a checkpoint folder."""
    return load_for_inference(ref, device=device)
