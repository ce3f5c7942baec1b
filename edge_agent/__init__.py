"""The edge side: device data, the agent's protocol logic, training runners, the CLI.

Importing this package does not import torch (the agent daemon must stay small);
training code loads torch when it first runs. Names are imported on first use (PEP 562), so that
`genfl-edge status --help` loads only what it needs.
"""

import lazy_loader

# the names are the imports of __init__.pyi (which the type checker reads), each imported on first use
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
__version__ = "0.1.0"
