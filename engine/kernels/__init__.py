"""GPU kernels for the NF4 path (Triton); each has a stock PyTorch path it falls back to."""
