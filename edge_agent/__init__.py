"""The edge side: device data, the agent's protocol logic, training runners, the CLI.

Importing this package does not import torch (the agent daemon must stay small);
training code loads torch when it first runs. Names are imported on first use (PEP 562), so that
`genfl-edge status --help` loads only what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol._lazy import lazy_package

if TYPE_CHECKING:
    from ._agent import AgentCore, TrainingDone, TrainingRunner
    from ._daemon import agent_config_text
    from ._data import (
        DeviceDataset,
        LabeledArrays,
        check_arrays_fit,
        check_fits_model,
        in_fleet_order,
        load_dataset,
        save_npz,
        with_channels,
    )
    from ._policy import TaskPolicy, local_steps
    from ._privacy import laplace_label_counts, released_label_counts, scaled_to_total
    from ._runner import InProcessRunner, run_task

_WHERE = {
    "AgentCore": "_agent",
    "TrainingDone": "_agent",
    "TrainingRunner": "_agent",
    "agent_config_text": "_daemon",
    "DeviceDataset": "_data",
    "LabeledArrays": "_data",
    "check_arrays_fit": "_data",
    "check_fits_model": "_data",
    "in_fleet_order": "_data",
    "load_dataset": "_data",
    "save_npz": "_data",
    "with_channels": "_data",
    "TaskPolicy": "_policy",
    "local_steps": "_policy",
    "laplace_label_counts": "_privacy",
    "released_label_counts": "_privacy",
    "scaled_to_total": "_privacy",
    "InProcessRunner": "_runner",
    "run_task": "_runner",
}

__all__, __getattr__, __dir__ = lazy_package(__name__, _WHERE)  # every name it offers, imported on first use
__version__ = "0.1.0"
