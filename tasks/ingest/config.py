"""The ingest stage's settings (`IngestConfig`): how sources are read and how OUT is laid out."""

from __future__ import annotations

import codecs
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.common import MemoryLimit

MiB = 1 << 20


class IngestConfig(BaseModel):
    """How to read the sources and how to lay out the output."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["file", "blank_line", "percent_line"] = Field(
        "file",
        description="How .txt/.md files become documents: one per file, or cut at blank lines, "
        "or at lines holding only '%' (fortune format).",
    )
    text_field: str = Field("text", min_length=1, description="JSONL: the key holding the text.")
    text_column: str = Field("text", min_length=1, description="CSV/TSV/Parquet: the text column.")
    part_bytes: int = Field(
        64 * MiB, ge=1, description="Start a new data part after about this many bytes of text."
    )
    shard_bytes: int = Field(
        256 * MiB, ge=1, description="A shard groups input files up to about this many bytes."
    )
    shard_files: int = Field(4096, ge=1, description="A shard groups at most this many files.")
    max_doc_bytes: int = Field(
        256 * MiB,
        ge=1,
        le=1 << 30,
        description="Larger documents are quarantined (too_large); peak memory is about 3x this.",
    )
    max_reject_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this share of its items is quarantined (1.0: never).",
    )
    read_chunk_bytes: int = Field(
        MiB, ge=1, le=64 * MiB, description="Files are read in chunks of this many bytes."
    )
    include_hidden: bool = Field(
        False, description="Also read hidden files and folders (names starting with '.') in folders."
    )
    encoding: str | None = Field(
        None,
        description="The encoding of text that is not valid UTF-8 (a Python codec name such as "
        "iso8859-2 or cp1251), instead of detecting it; HTML pages use it when they declare none.",
    )

    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPU cores the stage uses; none: all of this machine's. `forja ingest` reads the "
        "shards in up to this many processes (at most one per shard and per 32 MB of input), each "
        "with its share of the memory. Never changes the output.",
    )
    memory_limit: MemoryLimit = Field(
        "2GB",
        description="Memory the stage may use, e.g. '2GB': the shards' tables of the texts they have "
        "read (to drop repeats before staging them; one per process reading) share up to a third, "
        "and DuckDB (the commit's dedup, "
        "which runs after the shards and spills to disk in the staging folder) half. Never changes "
        "the output.",
    )
    encodings: dict[str, str] = Field(
        default_factory=dict,
        description="Per source of a mixture (--source NAME=PATH): NAME -> the encoding of its text "
        'that is not UTF-8, e.g. {"pl": "iso8859-2", "ru": "cp1251"}; overrides `encoding` there.',
    )

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str | None) -> str | None:
        return codec_name(v, "ingest.encoding")

    @field_validator("encodings")
    @classmethod
    def _codecs(cls, v: dict[str, str]) -> dict[str, str]:
        return {
            name: codec_name(e, f"ingest.encodings.{name}") or "" for name, e in v.items() if e and e.strip()
        }

    def cores(self) -> int:
        """The cores the stage uses: `workers`, or all that this process may run on."""
        return self.workers or len(os.sched_getaffinity(0))

    def for_source(self, name: str) -> IngestConfig:
        """The config one source of a mixture is read with: its own encoding, if it has one."""
        return self.model_copy(update={"encoding": self.encodings.get(name, self.encoding), "encodings": {}})

    @field_validator("text_field", "text_column")
    @classmethod
    def _not_blank(cls, v: str, info: Any) -> str:
        if not v.strip():
            raise ValueError(f"{info.field_name} must name a field, e.g. 'text'; got {v!r}")
        return v


def codec_name(v: str | None, setting: str) -> str | None:
    """Python's name of the codec `v` names (None for none); a clear error for what is not one."""
    if v is None or not v.strip():
        return None
    try:
        name = codecs.lookup(v.strip()).name
    except LookupError:
        raise ValueError(
            f"{setting}={v!r} is not an encoding Python knows; use a codec name such as "
            "iso8859-2, cp1251 or koi8-r"
        ) from None
    if name in ("utf-16", "utf-32") or name.startswith(("utf-16", "utf-32")):
        raise ValueError(f"{setting}={v!r}: UTF-16/32 files must be converted to UTF-8 first")
    return name


def identity_dict(config: IngestConfig) -> dict[str, Any]:
    """The config as the digest and the cache key see it: `encoding` unset is left out, so the
    digests and keys of configs made before the field existed stay the same; `encodings` is left
    out too: a source is read with its own (`for_source`), and another source's does not matter;
    and `memory_limit` and `workers`, which never change the output."""
    data = config.model_dump(mode="json", exclude={"memory_limit", "workers"})
    if data.get("encoding") is None:
        data.pop("encoding", None)
    data.pop("encodings", None)
    return data


def as_config(config: IngestConfig | dict[str, Any] | None) -> IngestConfig:
    """`config` as an IngestConfig (validated when a dict; the defaults when None)."""
    if config is None:
        return IngestConfig()
    return config if isinstance(config, IngestConfig) else IngestConfig.model_validate(config)
