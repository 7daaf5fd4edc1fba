"""The photos a bench script runs on: a sample workspace, or queries + tiles + truth given one by one.

ap = argparse.ArgumentParser(); add_photo_arguments(ap); args = ap.parse_args()
queries, truth, source = open_photo_set(args)  # every query; truth indexed by photo_id
"""

from __future__ import annotations

import argparse

import pandas as pd

from manifests import read_manifest, read_queries
from pipeline.tile_sources import open_tile_source


def add_photo_arguments(ap: argparse.ArgumentParser, photos_help: str = "the first N photos") -> None:
    ap.add_argument("--workdir", help="a sample workspace (queries.parquet, truth.parquet, tiles/)")
    ap.add_argument("--queries")
    ap.add_argument("--tiles")
    ap.add_argument("--truth", help="truth.parquet or the real sample's truth.csv")
    ap.add_argument("--photos", type=int, default=8, help=photos_help)


def open_photo_set(args: argparse.Namespace):
    """(all queries as a DataFrame, the truth indexed by photo_id, the tile source)."""
    q, _ = read_queries(args.queries or f"{args.workdir}/queries.parquet")
    truth_path = args.truth or f"{args.workdir}/truth.parquet"
    truth = (
        pd.read_csv(truth_path) if truth_path.endswith(".csv") else read_manifest(truth_path, "truth", geometry=False)
    ).set_index("photo_id")
    return q, truth, open_tile_source(args.tiles or f"{args.workdir}/tiles")
