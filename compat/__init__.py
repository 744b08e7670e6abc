"""Model support the running ComfyUI lacks, built on its own classes, registered only when needed."""
