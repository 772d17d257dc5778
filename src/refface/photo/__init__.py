"""The photo the user keeps: its output scale and background, its tone, its file and metadata (no face code)."""
