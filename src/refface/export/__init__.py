"""Export of ReF-LDM to ONNX files that ONNX Runtime / TensorRT hosts run without PyTorch.

- `graphs`: the four networks as modules with plain tensor inputs (CacheKV's keys/values as inputs/outputs);
- `names`: the official names of the attention layers, which face-swap hosts bind;
- `onnx_export`: writing the four graphs and `refface_onnx.json` into a folder, atomically;
- `description`: the JSON description (every input/output, the sampling constants);
- `verify`: onnxruntime against PyTorch on random inputs, per graph;
- `onnx_sampler`: a whole restoration with numpy and onnxruntime only (no torch import).

Nothing here is imported by `import refface`; the sampler module must stay importable without torch.
"""
