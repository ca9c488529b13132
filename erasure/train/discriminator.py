"""canvas-gan's discriminator: a small ResNet D for 32x32 images, used only to train the generator.

    D = Discriminator(DiscriminatorConfig(class_counts=(13, 10), condition_counts=(13, 10)))
    logits, (style_logits, object_logits) = D.forward_with_classes(images, labels)

StyleGAN2's 'resnet' discriminator at canvas-gan's size, with equalised learning rate like the generator
(`pipelines.stylegan`); what erasure.train.gan trains against. Nothing outside training needs it, so it lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.stylegan import SQRT2, EqualLinear, factor_one_hot, resolutions


@dataclass
class DiscriminatorConfig:
    resolution: int = 32
    channels: tuple[int, ...] = (32, 32, 64, 64)  # at 32, 16, 8 and 4 px
    mbstd_group: int = 4  # minibatch standard deviation group size
    img_channels: int = 3
    # auxiliary classifier heads, e.g. (13, 10) for styles and objects; () = none
    class_counts: tuple[int, ...] = ()
    # classes the real/fake logit is conditioned on (projection discriminator); () = unconditional
    condition_counts: tuple[int, ...] = ()

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.class_counts = tuple(int(c) for c in self.class_counts)
        self.condition_counts = tuple(int(c) for c in self.condition_counts)
        if len(self.channels) != len(resolutions(self.resolution)):
            raise ValueError(f"need one channel count per resolution {resolutions(self.resolution)[::-1]}.")


class EqualConv2d(nn.Module):
    """Plain convolution with equalised learning rate (discriminator); optional 2x average-pool after it."""

    def __init__(self, cin, cout, kernel, bias=True, activation=False, down=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.activation, self.down = 1 / math.sqrt(cin * kernel * kernel), activation, down

    def forward(self, x):
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


class Discriminator(nn.Module):
    """ResNet discriminator (StyleGAN2's 'resnet' D): fromRGB, residual down blocks to 4x4, minibatch std, 2 FCs.

    With `class_counts`, a linear head on the same features also predicts one label per group (AC-GAN's auxiliary
    classifier, Odena et al. 2017); train_gan fits it on the real images' labels. With `condition_counts`, the
    real/fake logit is conditioned on labels by projection (Miyato & Koyama, ICLR 2018): the labels' embedding
    dotted with the features, scaled by 1 / sqrt(features), is added to the logit, so D judges whether an image is
    a real one *of those classes* (train_gan gives a fake the classes its latent picked).
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = c = config or DiscriminatorConfig()
        ch = c.channels
        self.from_rgb = EqualConv2d(c.img_channels, ch[0], 1, activation=True)
        self.blocks = nn.ModuleList()
        for i in range(len(ch) - 1):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "conv0": EqualConv2d(ch[i], ch[i], 3, activation=True),
                        "conv1": EqualConv2d(ch[i], ch[i + 1], 3, activation=True, down=True),
                        "skip": EqualConv2d(ch[i], ch[i + 1], 1, bias=False, down=True),
                    }
                )
            )
        self.conv = EqualConv2d(ch[-1] + 1, ch[-1], 3, activation=True)
        self.fc = EqualLinear(ch[-1] * 16, ch[-1], activation=True)
        self.out = EqualLinear(ch[-1], 1)
        self.classify = EqualLinear(ch[-1], sum(c.class_counts)) if c.class_counts else None
        self.project = EqualLinear(sum(c.condition_counts), ch[-1]) if c.condition_counts else None

    def minibatch_std(self, x):
        n, c, h, w = x.shape
        g = min(self.config.mbstd_group, n)
        if n % g:
            g = 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # (N / g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], 1)

    def features(self, images):
        x = self.from_rgb(images)
        for block in self.blocks:
            x = (block["skip"](x) + block["conv1"](block["conv0"](x))) / SQRT2
        return self.fc(self.conv(self.minibatch_std(x)).flatten(1))

    def _logits(self, features, labels):
        logits = self.out(features).squeeze(1)
        if self.project is None:
            return logits
        if labels is None:
            raise ValueError("this discriminator is conditional (condition_counts): pass the images' labels.")
        one_hot = factor_one_hot(labels, self.config.condition_counts)
        return logits + (features * self.project(one_hot)).sum(1) / math.sqrt(features.shape[1])

    def forward(self, images, labels=None):
        """Real-vs-fake logits (N,); `labels` (N, factors) class indices for a conditional discriminator."""
        return self._logits(self.features(images), labels)

    def forward_with_classes(self, images, labels=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Real-vs-fake logits (N,) and one (N, count) logit block per entry of `class_counts`."""
        if self.classify is None:
            raise ValueError(
                "this discriminator has no classifier head (DiscriminatorConfig.class_counts is empty)."
            )
        features = self.features(images)
        groups = list(self.classify(features).split(list(self.config.class_counts), dim=1))
        return self._logits(features, labels), groups
