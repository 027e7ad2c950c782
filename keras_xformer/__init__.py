"""keras_xformer: the Transformer of Vaswani et al. (2017) as Keras 3 layers."""

__version__ = "0.1.0"

from keras_xformer import callbacks  # noqa: F401
from keras_xformer import layers  # noqa: F401
from keras_xformer import losses  # noqa: F401
from keras_xformer import metrics  # noqa: F401
from keras_xformer import models  # noqa: F401
from keras_xformer import schedules  # noqa: F401
