"""convgen.nn: torch.nn's modules over NumPy, traced once into a graph and compiled.

A PyTorch model ports by changing its import: the layers take torch's constructor
arguments, and ``state_dict`` keys and shapes are torch's, so a torch model's
state_dict loads unchanged. ``net.compile(input_shape=...)`` traces ``forward`` on
symbolic values and compiles the graph; ``net(x)`` on a NumPy array runs the oracle.
"""

from convgen.nn import functional
from convgen.nn.conv import (Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d,
                   ConvTranspose3d)
from convgen.nn.init import manual_seed
from convgen.nn.layers import (ELU, GELU, SELU, AdaptiveAvgPool1d, AdaptiveAvgPool2d,
                     AdaptiveAvgPool3d, AvgPool1d, AvgPool2d, AvgPool3d, BatchNorm1d,
                     BatchNorm2d, BatchNorm3d, Dropout, Flatten, Hardsigmoid, Hardswish,
                     Identity, LeakyReLU, Linear, LogSoftmax, MaxPool1d, MaxPool2d, MaxPool3d,
                     ReLU, ReLU6, Sigmoid, SiLU, Softmax, Tanh, Upsample)
from convgen.nn.module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential, StateDictError

__all__ = [
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Dropout", "ELU", "Flatten", "GELU",
    "Hardsigmoid", "Hardswish", "Identity", "IncompatibleKeys", "LeakyReLU", "Linear",
    "LogSoftmax", "MaxPool1d", "MaxPool2d", "MaxPool3d", "Module", "ModuleList", "Parameter",
    "ReLU", "ReLU6", "SELU", "Sequential", "Sigmoid", "SiLU", "Softmax", "StateDictError",
    "Tanh", "Upsample", "functional", "manual_seed",
]
