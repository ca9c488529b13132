"""erasure: remove concepts from text-to-image diffusion models and GANs, and prove it with measurements.

    from erasure import erase, load_erased
    from pipelines import load_pipeline, save_delta

    result = erase(load_pipeline("canvas-sd"), "van gogh", method="doco")
    save_delta(result, "runs/van-gogh")
    pipe = load_erased("canvas-sd", "runs/van-gogh")

`METHODS` names every diffusion method; `unlearn` is the GAN unlearner. They are imported on first use, so that
`import erasure.canvas` (the world) stays light.
"""

_EXPORTS = {
    "erase": "erasure.engine.erase",
    "ErasureResult": "erasure.engine.erase",
    "unlearn": "erasure.engine.unlearn",
    "METHODS": "erasure.methods",
    "load_erased": "pipelines.delta",
}

__all__ = ["METHODS", "ErasureResult", "erase", "load_erased", "unlearn"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'erasure' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
