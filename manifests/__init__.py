"""Manifests: the Parquet tables the stages exchange (schemas, validation, atomic writes)."""

from .errors import ManifestError, Problem
from .io import ManifestWriter, atomic_output, detect_kind, read_manifest, to_table, validate, write_manifest
from .queries import parse_earthloc_name, read_queries
from .schemas import (
    CORNER_COLUMNS,
    DATABASE,
    DECISIONS,
    FOOTPRINTS,
    KINDS,
    PAIRS,
    QUERIES,
    STATUSES,
    TRUTH,
    ManifestKind,
)

__all__ = [
    "CORNER_COLUMNS",
    "DATABASE",
    "DECISIONS",
    "FOOTPRINTS",
    "KINDS",
    "PAIRS",
    "QUERIES",
    "STATUSES",
    "TRUTH",
    "ManifestError",
    "ManifestKind",
    "ManifestWriter",
    "Problem",
    "atomic_output",
    "detect_kind",
    "parse_earthloc_name",
    "read_manifest",
    "read_queries",
    "to_table",
    "validate",
    "write_manifest",
]
