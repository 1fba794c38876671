"""Other projects' checkpoints as bindspace checkpoints (conversions that import nothing of those projects)."""
