"""The contract both sides speak: topics, messages, tensors, blobs, transport seam.

Imports no torch and knows nothing about rounds or training. Names are imported on first use (PEP 562), so
that a command loads only the modules it needs (the administrative commands start in well under a second).
"""

import lazy_loader

# the names are the imports of __init__.pyi (which the type checker reads), each imported on first use
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
