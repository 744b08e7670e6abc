"""ComfyUI node classes, one module per theme. Imported only inside a running ComfyUI."""
from . import anima, common, loaders, lora, model_tools, precision, prompts, sampling

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, lora, prompts, sampling, model_tools, anima, precision):
    NODE_CLASS_MAPPINGS.update({k: common.with_tooltips(v) for k, v in _module.NODE_CLASS_MAPPINGS.items()})
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
