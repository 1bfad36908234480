"""Canvas Chat's inference engine: a worker process that owns DiffusionGemma and the GPU.

Nothing in this package imports Qt; the GUI talks to it only through `engine.protocol`.
"""

__version__ = "0.1.0"
