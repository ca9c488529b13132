"""canvas-gan (StyleGAN2-lite) and Text-to-Unlearn, the text-guided GAN unlearner.

from erasure.gan import load_generator, unlearn
new_generator, info = unlearn(load_generator("assets/canvas-gan"), ["van gogh"])
"""

from erasure.gan.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    load_generator,
    save_generator,
    to_unit,
)
from erasure.gan.text_unlearn import TextUnlearnConfig, unlearn

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "TextUnlearnConfig",
    "load_generator",
    "save_generator",
    "to_unit",
    "unlearn",
]
