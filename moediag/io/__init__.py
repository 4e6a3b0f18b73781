"""Low-level file access shared by traces and checkpoints."""
