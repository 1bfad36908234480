"""The main window and its parts: composer, sidebar, settings dialog, engine status and crash banner."""
