"""Canvas Chat's own benchmark: engine overhead, diffusion cost, the autoregressive baseline."""
