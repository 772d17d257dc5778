"""refface: reference-based face restoration (ReF-LDM and Composite-Context methods)."""

from refface.errors import RefFaceError
from refface.imaging import load_image, save_image
from refface.models.cache_kv import ReferenceKV
from refface.models.config import RefLDMArchitecture, load_official_config, released_architecture, tiny_architecture
from refface.pipelines.refldm import RefLDMPipeline, RestorationOutput

__version__ = "0.1.0"


def __getattr__(name: str):
    """The Composite-Context pipeline imports transformers, so it loads on first use, not with `import refface`."""
    if name == "CompositeContextPipeline":
        from refface.pipelines.composite import CompositeContextPipeline

        return CompositeContextPipeline
    raise AttributeError(f"module 'refface' has no attribute {name!r}")


__all__ = [
    "CompositeContextPipeline",
    "RefFaceError",
    "RefLDMArchitecture",
    "RefLDMPipeline",
    "ReferenceKV",
    "RestorationOutput",
    "load_image",
    "load_official_config",
    "released_architecture",
    "save_image",
    "tiny_architecture",
]
