"""The CUDA backend (issue 17): CUDA C++ kernels, built by nvcc for a GPU, or by the host
C++ compiler for the CPU emulator (emulator.py, emulator.h), which runs the same .cu text
with each GPU thread a fiber and checks it for races and barrier divergence."""
