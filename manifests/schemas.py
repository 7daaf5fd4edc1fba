"""Arrow schemas of the manifests of design.md, one place for every column's type and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

CORNER_COLUMNS = ("tl_lat", "tl_lon", "tr_lat", "tr_lon", "br_lat", "br_lon", "bl_lat", "bl_lon")
"""Ground points (degrees) of the top-left, top-right, bottom-right and bottom-left pixels."""

BBOX_TYPE = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())])

STATUSES = ("localized", "not_localized", "error")


def _evidence() -> list[pa.Field]:
    """The decision's evidence beside ``inliers`` (pipeline.footprint.evidence.FEATURES, in its order)."""
    return [
        pa.field(name, pa.int32() if name == "candidate_inliers" else pa.float64())
        for name in ("inlier_ratio", "coverage", "candidate_inliers", "shift", "area_ratio", "keystone", "aspect")
    ]


def _corners(nullable: bool) -> list[pa.Field]:
    return [pa.field(c, pa.float64(), nullable=nullable) for c in CORNER_COLUMNS]


@dataclass(frozen=True)
class ManifestKind:
    """A manifest's name, its Arrow schema and which columns must be present and non-null."""

    name: str
    schema: pa.Schema
    required: tuple[str, ...]
    geometry: str | None = None
    geometry_types: tuple[str, ...] = ()
    produced_by: str = ""
    optional: tuple[str, ...] = field(default=())

    @property
    def columns(self) -> list[str]:
        return self.schema.names


QUERIES = ManifestKind(
    name="queries",
    schema=pa.schema(
        [
            pa.field("photo_id", pa.string(), nullable=False),
            pa.field("image_path", pa.string(), nullable=False),
            pa.field("center_lat", pa.float64(), nullable=False),
            pa.field("center_lon", pa.float64(), nullable=False),
            pa.field("nadir_lat", pa.float64()),
            pa.field("nadir_lon", pa.float64()),
            pa.field("acquired_at", pa.timestamp("us", tz="UTC")),
            pa.field("focal_length_mm", pa.float64()),
            pa.field("tilt_deg", pa.float64()),
            pa.field("cloud_pct", pa.float64()),
            pa.field("split", pa.string()),
        ]
    ),
    required=("photo_id", "image_path", "center_lat", "center_lon"),
    optional=("nadir_lat", "nadir_lon", "acquired_at", "focal_length_mm", "tilt_deg", "cloud_pct", "split"),
    produced_by="you (CSV or Parquet), or `python -m pipeline run sample`",
)

DATABASE = ManifestKind(
    name="database",
    schema=pa.schema(
        [
            pa.field("tile_id", pa.string(), nullable=False),
            pa.field("zoom", pa.int32(), nullable=False),
            pa.field("x", pa.int64(), nullable=False),
            pa.field("y", pa.int64(), nullable=False),
            pa.field("size_tiles", pa.int32(), nullable=False),
            pa.field("year", pa.int32()),
            pa.field("geometry", pa.binary(), nullable=False),
            *_corners(nullable=False),
            pa.field("area_km2", pa.float64(), nullable=False),
            pa.field("bbox", BBOX_TYPE, nullable=False),
        ]
    ),
    required=("tile_id", "zoom", "x", "y", "size_tiles", "geometry", *CORNER_COLUMNS, "area_km2"),
    geometry="geometry",
    geometry_types=("Polygon", "MultiPolygon"),
    produced_by="`python -m pipeline run index`",
)

FOOTPRINTS = ManifestKind(
    name="footprints",
    schema=pa.schema(
        [
            pa.field("photo_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reason", pa.string()),
            pa.field("geometry", pa.binary()),
            *_corners(nullable=True),
            pa.field("area_km2", pa.float64()),
            pa.field("inliers", pa.int32()),
            pa.field("confidence", pa.float64()),
            # the decision's evidence (pipeline.footprint.evidence): of the localized footprint, or of the strongest
            # one turned down
            *_evidence(),
            pa.field("zoom", pa.int32()),
            pa.field("rotation_deg", pa.int32()),
            pa.field("candidate_id", pa.string()),
            pa.field("iterations", pa.int32()),
            pa.field("homography", pa.list_(pa.float64(), 9)),
            pa.field("matcher", pa.string()),
            pa.field("elapsed_s", pa.float64()),
            pa.field("bbox", BBOX_TYPE),
        ]
    ),
    required=("photo_id", "status"),
    geometry="geometry",
    geometry_types=("Polygon", "MultiPolygon"),
    produced_by="`python -m pipeline run footprints`",
)

PAIRS = ManifestKind(
    name="pairs",
    schema=pa.schema(
        [
            pa.field("photo_id", pa.string(), nullable=False),
            pa.field("tile_id", pa.string(), nullable=False),
            pa.field("iou", pa.float64(), nullable=False),
            pa.field("zoom", pa.int32(), nullable=False),
            pa.field("intersection_km2", pa.float64(), nullable=False),
            pa.field("photo_area_km2", pa.float64(), nullable=False),
            pa.field("tile_area_km2", pa.float64(), nullable=False),
        ]
    ),
    required=("photo_id", "tile_id", "iou", "zoom", "intersection_km2", "photo_area_km2", "tile_area_km2"),
    produced_by="`python -m pipeline run pairs`",
)

TRUTH_REASONS = ("ok", "limb", "night", "wrong_label", "clouds")
"""Why a simulated photo is or is not localizable: ``ok`` (localizable) or the negative's kind."""

TRUTH = ManifestKind(
    name="truth",
    schema=pa.schema(
        [
            pa.field("photo_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("localizable", pa.bool_(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("geometry", pa.binary()),
            *_corners(nullable=True),
            pa.field("area_km2", pa.float64()),
            pa.field("center_lat", pa.float64(), nullable=False),
            pa.field("center_lon", pa.float64(), nullable=False),
            pa.field("target_lat", pa.float64(), nullable=False),
            pa.field("target_lon", pa.float64(), nullable=False),
            pa.field("nadir_lat", pa.float64(), nullable=False),
            pa.field("nadir_lon", pa.float64(), nullable=False),
            pa.field("altitude_km", pa.float64(), nullable=False),
            pa.field("focal_length_mm", pa.float64(), nullable=False),
            pa.field("tilt_deg", pa.float64(), nullable=False),
            pa.field("azimuth_deg", pa.float64(), nullable=False),
            pa.field("roll_deg", pa.float64(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("world_year", pa.int32(), nullable=False),
            pa.field("cloud_pct", pa.float64(), nullable=False),
            pa.field("iss_structure", pa.bool_(), nullable=False),
            pa.field("jpeg_quality", pa.int32(), nullable=False),
            pa.field("bbox", BBOX_TYPE),
        ]
    ),
    required=(
        "photo_id",
        "split",
        "localizable",
        "reason",
        "center_lat",
        "center_lon",
        "target_lat",
        "target_lon",
        "nadir_lat",
        "nadir_lon",
        "altitude_km",
        "focal_length_mm",
        "tilt_deg",
        "azimuth_deg",
        "roll_deg",
        "width",
        "height",
        "world_year",
    ),
    geometry="geometry",
    geometry_types=("Polygon", "MultiPolygon"),
    produced_by="`python -m pipeline run sample` (the simulated photos' ground truth)",
)
"""Ground truth of simulated photos: the exact footprint (corners ray-cast from the camera, in
the footprints manifest's corner convention), whether the photo is localizable and why not,
and the camera (aimed at ``target`` from ``nadir``; ``tilt_deg`` off nadir towards
``azimuth_deg``; ``roll_deg`` about the optical axis; see pipeline.simulate.camera)."""

DECISIONS = ManifestKind(
    name="decisions",
    schema=pa.schema(
        [
            pa.field("photo_id", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("role", pa.string()),  # fit or validation, in a calibration's decisions
            pa.field("status", pa.string(), nullable=False),
            pa.field("refined", pa.bool_()),
            pa.field("survived", pa.bool_()),
            pa.field("reason", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("zoom", pa.int32()),
            pa.field("rotation_deg", pa.int32()),
            pa.field("candidate_id", pa.string()),
            pa.field("iterations", pa.int32()),
            pa.field("trace", pa.list_(pa.int32())),
            pa.field("inliers", pa.int32()),
            *_evidence(),
            *_corners(nullable=True),
            pa.field("iou", pa.float64()),
            pa.field("right", pa.bool_()),
            pa.field("pairs", pa.int32()),
            pa.field("matcher", pa.string()),
            pa.field("elapsed_s", pa.float64()),
        ]
    ),
    required=("photo_id", "status"),
    produced_by="`python -m pipeline run calibrate` (WORKDIR/calibration/)",
)
"""The calibration's data: one row per refined candidate of each photo (its evidence, see
pipeline.footprint.evidence, and its footprint's corners when it kept one), one row per photo
with no candidate to refine, one error row per photo that could not be searched; ``iou``
and ``right`` once scored against the truth."""

KINDS = {k.name: k for k in (QUERIES, DATABASE, FOOTPRINTS, PAIRS, TRUTH, DECISIONS)}
