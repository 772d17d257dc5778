"""refface inside ComfyUI: custom nodes that load a model, encode a person and restore faces.

ComfyUI loads a custom-node package from `ComfyUI/custom_nodes/` and reads `NODE_CLASS_MAPPINGS` and
`NODE_DISPLAY_NAME_MAPPINGS` from it: link this folder there (with refface installed in ComfyUI's Python),
see docs/comfyui.md.
"""

from refface.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
