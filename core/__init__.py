"""Comfy-free logic of Modelsmith: file formats, inspection, pickle guard, prompt grammar, merging.

Nothing in this package imports ComfyUI; torch is imported only by the parts that need tensors."""
