"""The local OpenAI-compatible HTTP server: it shares the worker's model and its one GPU loop."""
