"""Callbacks that Lightning does not already ship."""

from callbacks.checkpoints import AtomicCheckpointIO, DiskFull, LatestCheckpoint
from callbacks.epoch_line import EpochLine
from callbacks.prediction_writer import CSVPredictionWriter
from callbacks.random_state import RandomState
from callbacks.speed import Speed
from callbacks.test_report import TestReport

__all__ = ["AtomicCheckpointIO", "CSVPredictionWriter", "DiskFull", "EpochLine", "LatestCheckpoint", "RandomState", "Speed", "TestReport"]
