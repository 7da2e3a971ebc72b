"""The files of a Hugging Face folder as Forja writes and reads them: their names, the provenance
records, and the small helpers that write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm.errors import ForjaError
from lm.fileio import sha256_file

FORMAT = "forja-hf-export"
VERSION = 1
EXPORT_MANIFEST = "forja.json"  # provenance of an exported folder; written last
IMPORT_MANIFEST = "hf_import.json"  # what an imported run came from
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SP_MODEL = "tokenizer.model"


def require(module: str):
    """`module`, imported; a ForjaError naming the extra to install when it is missing."""
    try:
        return __import__(module)
    except ImportError as e:
        raise ForjaError(
            f"exporting to Hugging Face needs the `{module}` package: install the extra with "
            "`pip install 'forja[hf]'`"
        ) from e


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of each file in `folder` but the export manifest (which lists them)."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != EXPORT_MANIFEST
    }


def write_json(path: Path, obj: Any) -> None:
    """Indented UTF-8 JSON, as the Hugging Face tools write their own config files."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
