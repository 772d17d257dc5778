"""The names of the degradation presets, in a module of their own: the command line lists them without loading
torch (the presets themselves are `refface.data.degradations.PRESETS`)."""

PRESET_NAMES = ("train", "moderate", "severe", "realesrgan")
