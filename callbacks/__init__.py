"""Callbacks that Lightning does not already ship."""

from callbacks.prediction_writer import CSVPredictionWriter

__all__ = ["CSVPredictionWriter"]
