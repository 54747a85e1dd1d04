"""The CUDA-on-CPU emulator: builds csrc/cuda as host C++ and runs its kernels with CUDA threads as
fibers (see include/sfemu.h). Test-only; nothing in the sparseforce package imports it."""
