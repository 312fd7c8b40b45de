"""rnnfast: fast CPU kernels for recurrent layers (RNN, LSTM, GRU) with PyTorch's semantics.

Levels:
  rnnfast.ops        functional kernels, one layer and one direction (compiled)
  rnnfast.reference  the same functions in plain numpy (the oracle)
  rnnfast.RNN/LSTM/GRU and the *Cell classes: torch-like layers
"""
__version__ = "0.1.0"

from ._config import set_num_threads, get_num_threads, show_config  # noqa: F401
from . import reference  # noqa: F401
from . import ops  # noqa: F401

_LAYER_NAMES = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "clip_grad_norm")


def __getattr__(name):
    # Layers load on first use so that `import rnnfast` stays cheap for kernel-only users.
    if name in _LAYER_NAMES:
        from . import layers
        return getattr(layers, name)
    if name == "interop":
        import importlib
        return importlib.import_module(".interop", __name__)
    raise AttributeError(f"module 'rnnfast' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAYER_NAMES) + ["interop"])
