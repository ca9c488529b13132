"""Text-to-Unlearn, the text-guided GAN unlearner (canvas-gan's StyleGAN2-lite lives in `pipelines.stylegan`).

from erasure import unlearn
new_generator, info = unlearn(load_generator("assets/canvas-gan"), ["van gogh"])
"""

from erasure.gan.text_unlearn import TextUnlearnConfig, run

__all__ = ["TextUnlearnConfig", "run"]
