"""Tests of the first-run path: hardware check, model download, local folder, setup screen."""
