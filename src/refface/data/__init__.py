"""Synthetic low-quality (LQ) images: blur kernels, degradation models and the folder job that applies them."""
