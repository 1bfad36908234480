"""The remote engine: chat with a model served over the OpenAI API (vLLM, Canvas Chat's own server)."""
