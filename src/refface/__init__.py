"""refface: reference-based face restoration (ReF-LDM and Composite-Context methods).

The names below load on first use, not with `import refface`: the command line imports this package to
print its help, which must not wait for torch, diffusers and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refface.errors import RefFaceError
from refface.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "CompositeContextPipeline": "refface.pipelines.composite",
    "RefLDMArchitecture": "refface.models.config",
    "RefLDMPipeline": "refface.pipelines.refldm",
    "ReferenceKV": "refface.models.cache_kv",
    "RestorationOutput": "refface.pipelines.base",
    "SamplingOptions": "refface.pipelines.base",
    "load_image": "refface.imaging",
    "load_official_config": "refface.models.config",
    "released_architecture": "refface.models.config",
    "save_image": "refface.imaging",
    "tiny_architecture": "refface.models.config",
}

if TYPE_CHECKING:
    from refface.imaging import load_image, save_image
    from refface.models.cache_kv import ReferenceKV
    from refface.models.config import RefLDMArchitecture, load_official_config, released_architecture, tiny_architecture
    from refface.pipelines.base import RestorationOutput, SamplingOptions
    from refface.pipelines.composite import CompositeContextPipeline
    from refface.pipelines.refldm import RefLDMPipeline


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "CompositeContextPipeline",
    "RefFaceError",
    "RefLDMArchitecture",
    "RefLDMPipeline",
    "ReferenceKV",
    "RestorationOutput",
    "SamplingOptions",
    "load_image",
    "load_official_config",
    "released_architecture",
    "save_image",
    "tiny_architecture",
]
