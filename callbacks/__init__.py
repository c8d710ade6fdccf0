"""Callbacks that Lightning does not already ship."""

from callbacks.checkpoints import LatestCheckpoint
from callbacks.prediction_writer import CSVPredictionWriter
from callbacks.random_state import RandomState
from callbacks.test_report import TestReport

__all__ = ["CSVPredictionWriter", "LatestCheckpoint", "RandomState", "TestReport"]
