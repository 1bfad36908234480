"""Model setup: the hardware verdict, the download from the Hugging Face Hub, a local folder, model choice."""
