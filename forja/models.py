"""Find a trained model from what a user types: a run folder, a checkpoint folder, or an MLflow URI.

`models:/forja@champion`, `models:/forja/3` and `runs:/<run id>/model` are downloaded from the
tracking server and read as a checkpoint: safetensors weights and a verified manifest. The pyfunc
wrapper code is not executed and nothing is unpickled, whatever the registry holds.
"""

from __future__ import annotations

from pathlib import Path

from lm.checkpoint import LoadedModel, load_for_inference
from lm.errors import CheckpointError

URI_SCHEMES = ("models:/", "runs:/")


def local_checkpoint(ref: str) -> Path:
    """A local checkpoint (or run) folder for `ref`, downloading it when `ref` is an MLflow URI."""
    if not ref.startswith(URI_SCHEMES):
        return Path(ref)
    from forja.home import configure

    configure()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except (MlflowException, OSError) as e:
        raise CheckpointError(f"cannot fetch {ref} from {mlflow.get_tracking_uri()}: {e}") from e
    ckpt = root / "artifacts" / "checkpoint"
    if not ckpt.is_dir():
        raise CheckpointError(f"{ref} is not a Forja model: {ckpt} is missing")
    return ckpt


def load_model_ref(ref: str, device: str = "cpu") -> LoadedModel:
    """Load a model for inference from a run folder, a checkpoint folder or an MLflow model URI."""
    return load_for_inference(local_checkpoint(ref), device=device)
