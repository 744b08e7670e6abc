"""API-format prompt graphs used by several tests."""


def txt2img(ckpt, *, loader="ModelsmithCheckpointLoader", text="1girl, solo", steps=2, cfg=5.0, size=64,
            seed=7, sampler="euler", scheduler="normal", prediction=None, save=True):
    g = {
        "1": {"class_type": loader, "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "worst quality", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg,
                                                   "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }
    if prediction is not None:
        g["1"]["inputs"]["prediction"] = prediction
    elif loader == "ModelsmithCheckpointLoader":
        g["1"]["inputs"]["prediction"] = "auto"
    if save:
        g["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "modelsmith_test"}}
    return g


def inspect(model_file):
    return {"1": {"class_type": "ModelsmithInspect", "inputs": {"model_file": model_file}}}
