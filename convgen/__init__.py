"""convgen: a code-generating convolution compiler.

Declare what a convolution is (:class:`ConvSpec`) and, separately, how to run it
(:class:`Schedule`); convgen generates specialized source, compiles it, loads it
through cffi and returns a callable checked against a NumPy oracle
(:func:`reference`).
"""

from convgen.aot import compile_to, load
from convgen.backends import BACKENDS
from convgen.compiler import BoundKernel, bind, compile, default_schedule
from convgen.config import get_num_threads, set_num_threads
from convgen.errors import (CompileError, CompilerNotFoundError, ConvgenError, OnnxImportError,
                     ScheduleError, SpecError, SpecFileError)
from convgen.functional import (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                         conv_transpose3d)
from convgen.graph.netspec import load_network
from convgen.kernel import Kernel
from convgen.onnx.importer import from_onnx  # imports onnx only when called
from convgen.reference import reference
from convgen.schedule import GpuSchedule, Schedule
from convgen.spec import ACTIVATIONS, ConvSpec
from convgen.tuning.distributed import tune_many
from convgen.tuning.tuner import MachineBusy, TuneResult, tune
from convgen.version import __version__

__all__ = [
    "ACTIVATIONS", "BACKENDS", "BoundKernel", "CompileError", "CompilerNotFoundError",
    "ConvSpec", "ConvgenError", "GpuSchedule", "Kernel", "OnnxImportError", "Schedule", "ScheduleError",
    "SpecError", "SpecFileError", "__version__", "bind", "compile", "compile_to", "conv1d",
    "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "default_schedule", "from_onnx", "get_num_threads", "load", "load_network", "MachineBusy",
    "reference",
    "set_num_threads", "tune", "tune_many", "TuneResult",
]
