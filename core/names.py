"""Names the command line offers before any work starts (so `python -m modelsmith` starts fast: no
module with real work is imported to build the argument parser). The modules that own each idea
import these; a test checks they agree with the registries."""

CONVENTIONS = ("anima", "illustrious", "noobai", "pony")            # core/prompt.py
QUANTIZE_FORMATS = ("fp8", "fp8_e5m2", "int8", "mxfp8", "nvfp4")      # core/quantize.py FORMATS
MERGE_METHODS = ("add_difference", "dare", "slerp", "ties", "weighted_sum")  # core/merge.py METHODS
DEFAULT_SERVER = "http://127.0.0.1:8188"                             # core/workflows.py
