"""refface: reference-based face restoration (ReF-LDM and Composite-Context methods)."""

from refface.errors import RefFaceError
from refface.imaging import load_image, save_image
from refface.models.cache_kv import ReferenceKV
from refface.models.config import RefLDMArchitecture, load_official_config, released_architecture, tiny_architecture
from refface.pipelines.refldm import RefLDMPipeline, RestorationOutput

__version__ = "0.1.0"

__all__ = [
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
