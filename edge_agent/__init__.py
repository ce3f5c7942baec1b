"""The edge side: device data, the agent's protocol logic, training runners, the CLI.

Importing this package does not import torch (the agent daemon must stay small);
training code loads torch when it first runs.
"""

from ._agent import AgentCore, TrainingDone, TrainingRunner
from ._data import DeviceDataset, LabeledArrays, check_fits_model, load_dataset, save_npz
from ._partition import dirichlet_partition, label_histogram, partition_labels, shard_partition
from ._policy import TaskPolicy, local_steps
from ._privacy import laplace_label_counts, released_label_counts, scaled_to_total
from ._report import histogram_table
from ._runner import InProcessRunner, run_task

__all__ = [
    "AgentCore",
    "DeviceDataset",
    "InProcessRunner",
    "LabeledArrays",
    "TaskPolicy",
    "TrainingDone",
    "TrainingRunner",
    "check_fits_model",
    "dirichlet_partition",
    "histogram_table",
    "label_histogram",
    "laplace_label_counts",
    "released_label_counts",
    "load_dataset",
    "local_steps",
    "partition_labels",
    "run_task",
    "save_npz",
    "scaled_to_total",
    "shard_partition",
]
__version__ = "0.1.0"
