"""The GUI side of the worker process: the engine client that supervises `python -m engine serve`."""
