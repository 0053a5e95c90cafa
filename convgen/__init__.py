"""convgen: a code-generating convolution compiler.

Declare what a convolution is (:class:`ConvSpec`) and, separately, how to run it
(:class:`Schedule`); convgen generates specialized source, compiles it, loads it
through cffi and returns a callable checked against a NumPy oracle
(:func:`reference`).
"""

from .aot import compile_to, load
from .backends import BACKENDS, compile
from .bound import BoundKernel, bind
from .errors import (CompileError, CompilerNotFoundError, ConvgenError, OnnxImportError,
                     ScheduleError, SpecError, SpecFileError)
from .functional import (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                         conv_transpose3d)
from .graph.netspec import load_network
from .kernel import Kernel
from .onnx_import import from_onnx  # imports onnx only when called
from .reference import reference
from .schedule import Schedule, default_schedule
from .spec import ACTIVATIONS, ConvSpec
from .tune import TuneResult, tune
from .version import __version__

__all__ = [
    "ACTIVATIONS", "BACKENDS", "BoundKernel", "CompileError", "CompilerNotFoundError",
    "ConvSpec", "ConvgenError", "Kernel", "OnnxImportError", "Schedule", "ScheduleError",
    "SpecError", "SpecFileError", "__version__", "bind", "compile", "compile_to", "conv1d",
    "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "default_schedule", "from_onnx", "load", "load_network", "reference", "tune", "TuneResult",
]
