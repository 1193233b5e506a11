"""Performance model of the ``sim`` runtime, from the Dilu authors' A100 profiles."""

from services.perf.model import BATCHES, SIM_MODELS, SM_PERCENTS, LatencyTable, PerfModel, load_model

__all__ = ["BATCHES", "SIM_MODELS", "SM_PERCENTS", "LatencyTable", "PerfModel", "load_model"]
