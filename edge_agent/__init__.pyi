"""What ``edge_agent`` offers (imported on first use, see ``__init__.py``): one import per submodule.

Each name is imported ``as`` itself: in a stub, that is what re-exports it."""

from ._agent import AgentCore as AgentCore, TrainingDone as TrainingDone, TrainingRunner as TrainingRunner
from ._daemon import agent_config_text as agent_config_text
from ._data import (
    DeviceDataset as DeviceDataset,
    LabeledArrays as LabeledArrays,
    check_arrays_fit as check_arrays_fit,
    check_fits_model as check_fits_model,
    in_fleet_order as in_fleet_order,
    load_dataset as load_dataset,
    save_npz as save_npz,
    with_channels as with_channels,
)
from ._policy import TaskPolicy as TaskPolicy, local_steps as local_steps
from ._privacy import (
    laplace_label_counts as laplace_label_counts,
    released_label_counts as released_label_counts,
    scaled_to_total as scaled_to_total,
)
from ._runner import InProcessRunner as InProcessRunner, run_task as run_task

__version__: str
