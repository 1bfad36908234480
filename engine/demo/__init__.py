"""The built-in demo model: its tokenizer, training corpus and training script."""
