"""Canvas Chat GUI (PySide6). Never imports torch or transformers."""
