"""Precision formats (fp8, nvfp4, nf4) and their kernels."""
