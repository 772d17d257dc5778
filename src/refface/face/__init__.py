"""Faces in real photos: detection, FFHQ alignment, paste-back and identity embedders."""
