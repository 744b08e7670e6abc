"""ComfyUI node classes, one module per theme. Imported only inside a running ComfyUI."""
from . import anima, common, loaders, lora, model_tools, precision, prompts, sampling

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, lora, prompts, sampling, model_tools, anima, precision):
    NODE_CLASS_MAPPINGS.update({k: common.with_tooltips(v) for k, v in _module.NODE_CLASS_MAPPINGS.items()})
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

# Model Doctor's routes (the page in web/doctor.js), when a ComfyUI server is running
from . import doctor_routes  # noqa: E402

doctor_routes.register()
