"""keras_xformer: the Transformer of Vaswani et al. (2017) as Keras 3 layers.

`import keras_xformer as kx` binds every subpackage. The backend-neutral ones
(`layers`, `models`, `losses`, `metrics`, `schedules`, `decoding`,
`callbacks`) import with the package; those built on TensorFlow (`text`,
`datasets`, `data`, `export`, `distribute`) load on first attribute access
(PEP 562), so that on the JAX and PyTorch backends `import keras_xformer`
pulls in no TensorFlow (about 2 s and 1 GB of address space).
"""

import importlib

__version__ = "0.1.0"

from keras_xformer import callbacks  # noqa: F401,E402
from keras_xformer import decoding  # noqa: F401,E402
from keras_xformer import layers  # noqa: F401,E402
from keras_xformer import losses  # noqa: F401,E402
from keras_xformer import metrics  # noqa: F401,E402
from keras_xformer import models  # noqa: F401,E402
from keras_xformer import schedules  # noqa: F401,E402

import keras as _keras  # noqa: E402

if _keras.backend.backend() == "torch":
    from keras_xformer._torch_compat import patch_dynamo_recompilation_reasons

    patch_dynamo_recompilation_reasons()

_LAZY_SUBPACKAGES = ("data", "datasets", "distribute", "export", "text")


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        # import_module also binds the submodule on this package, so later
        # lookups no longer come here.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))
