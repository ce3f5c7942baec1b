"""The cloud side: coordinator, strategies, aggregation, the CLI.

Names are imported on first use (PEP 562), so that the administrative commands
(``devices``, ``broker-config``, ``--help``) start without loading torch.
"""

import lazy_loader

# the names are the imports of __init__.pyi (which the type checker reads), each imported on first use
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
__version__ = "0.1.0"
