"""The stages: each reads manifests, runs library code, writes manifests.

Only stages that exist are registered; ``python -m pipeline run --help`` lists them.
"""

from __future__ import annotations

from .base import Stage, StageError
from .calibrate import CalibrateStage
from .describe import DescribeStage
from .eval import EvalStage
from .footprints import FootprintsStage
from .index import IndexStage
from .pairs import PairsStage
from .sample import SampleStage
from .train import TrainStage

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        SampleStage(),
        IndexStage(),
        FootprintsStage(),
        CalibrateStage(),
        PairsStage(),
        DescribeStage(),
        EvalStage(),
        TrainStage(),
    )
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise StageError(f"unknown stage {name!r}; valid stages: {', '.join(STAGES)}") from None


__all__ = ["STAGES", "Stage", "StageError", "get_stage"]
