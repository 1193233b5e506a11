"""The co-scaling policy (placeholder docstring; rules written below once measured)."""

from services.scaler.coscale.actions import (
    Action,
    ScaleIn,
    ScaleOut,
    SetInferenceQuota,
    SetMaxBatch,
    SetTrainingQuota,
)
from services.scaler.coscale.context import (
    DRAINING,
    READY,
    STARTING,
    Context,
    FunctionContext,
    GpuContext,
    InstanceContext,
    Profile,
    TrainingContext,
    Window,
)
from services.scaler.coscale.policy import DEFAULT_SETTINGS, decide
from services.scaler.coscale.settings import MIN_SHARE, CoscaleSettings
from services.scaler.coscale.state import CoscaleState, FunctionMemory, InstanceMemory

__all__ = [
    "DEFAULT_SETTINGS",
    "DRAINING",
    "MIN_SHARE",
    "READY",
    "STARTING",
    "Action",
    "Context",
    "CoscaleSettings",
    "CoscaleState",
    "FunctionContext",
    "FunctionMemory",
    "GpuContext",
    "InstanceContext",
    "InstanceMemory",
    "Profile",
    "ScaleIn",
    "ScaleOut",
    "SetInferenceQuota",
    "SetMaxBatch",
    "SetTrainingQuota",
    "TrainingContext",
    "Window",
    "decide",
]
