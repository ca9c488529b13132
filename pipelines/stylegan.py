"""canvas-gan's architecture: StyleGAN2-lite for 32x32 images (its discriminator: erasure/train/discriminator.py).

    G = Generator(GeneratorConfig())
    images = to_unit(G(torch.randn(8, G.config.z_dim), noise_mode="const"))   # (8, 3, 32, 32) in [0, 1]
    save_generator(G, "assets/canvas-gan"); G = load_generator("assets/canvas-gan")

What is kept from StyleGAN2 (Karras et al., CVPR 2020): a mapping network z -> w (pixel-normalised z, fully connected
layers with a learning-rate multiplier, a tracked w_avg for truncation); a learnt constant 4x4 input; modulated and
demodulated 3x3 convolutions whose style vector comes from w through a per-layer affine map; per-pixel noise inputs
with a learnt strength per layer; ToRGB outputs at every resolution (4, 8, 16, 32) summed through upsampling skips;
equalised learning rate (weights stored N(0, 1), scaled by 1/sqrt(fan_in) at run time); leaky ReLU 0.2 with gain
sqrt(2). What is dropped for size: FIR filters (bilinear resampling instead), path-length regularisation, fp16 clamps.

Modulated convolution without grouped convolutions. StyleGAN2 scales the weights per sample,
w'_{oik} = s_i w_{oik}, demodulates them, w''_{oik} = d_o w'_{oik} with d_o = 1 / sqrt(sum_{i,k} w'_{oik}^2 + eps),
and runs one grouped convolution with a different kernel per sample. A convolution is linear in each input channel,
so conv(x, w') = conv(x * s, w): the same result comes from scaling the *input* channels by s, running one plain
convolution with the shared weights, and multiplying output channel o by d_o, where d_o only needs
sum_i s_i^2 sum_k w_{oik}^2 = (s^2 @ (w^2 summed over k)^T)_o. The two are equal to rounding (tests/pipelines/test_stylegan.py
checks against the grouped form); the plain form is the faster one on CPU (DESIGN.md section 5).

Files are safetensors plus a config JSON; nothing is pickled.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from erasure.files import ASSETS

CANVAS_GAN = ASSETS / "canvas-gan"  # the shipped generator (python -m erasure.train.gan)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SQRT2 = math.sqrt(2.0)


@dataclass
class GeneratorConfig:
    """StyleGAN2-lite generator shape; every field is stored in config.json beside the weights."""

    z_dim: int = 64  # latent size
    w_dim: int = 128  # intermediate latent (style) size
    mapping_layers: int = 4  # fully connected layers of the mapping network (StyleGAN2: 8)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network (StyleGAN2's value)
    resolution: int = 32  # output size; the synthesis network starts at 4x4 and doubles up to it
    channels: tuple[int, ...] = (64, 64, 32, 32)  # feature channels at 4, 8, 16, 32 px
    img_channels: int = 3
    # sizes of the discrete factors that z's first coordinates pick (e.g. (13, 10): a style and an object);
    # () = none. The generator stays z -> image: see MappingNetwork.latent_classes.
    latent_classes: tuple[int, ...] = ()
    # the 4x4 input is the learnt constant plus an affine map of the first w, so that the layout (where an object
    # sits and its rough shape) can follow w; False = the constant alone, as StyleGAN2
    input_from_w: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.latent_classes = tuple(int(c) for c in self.latent_classes)
        if len(self.latent_classes) > self.z_dim:
            raise ValueError("latent_classes needs one coordinate of z per factor.")
        if len(self.channels) != len(resolutions(self.resolution)):
            raise ValueError(f"need one channel count per resolution {resolutions(self.resolution)}.")

    @property
    def num_ws(self) -> int:
        """How many w vectors the synthesis network reads: conv + ToRGB at 4 px, then 2 convs + ToRGB per block."""
        return 2 + 3 * (len(self.channels) - 1)


def resolutions(resolution: int) -> list[int]:
    """[4, 8, ..., resolution]."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}.")
    return [2**k for k in range(2, int(math.log2(resolution)) + 1)]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output (about [-1, 1]) -> images in [0, 1], as the judges and eval/ expect."""
    return ((images + 1) / 2).clamp(0, 1)


# --- layers ----------------------------------------------------------------------------------------------------
class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (and StyleGAN's lr multiplier); optional lrelu * sqrt 2."""

    def __init__(self, cin, cout, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init) / lr_mul))
        self.gain, self.lr_mul, self.activation = lr_mul / math.sqrt(cin), lr_mul, activation

    def forward(self, x):
        x = F.linear(x, self.weight * self.gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activation else x


def modulated_conv2d(x, weight, styles, demodulate=True, eps=1e-8):
    """StyleGAN2's modulated convolution with plain convolutions (module docstring): conv(x * s, w) * d.

    x (N, I, H, W), weight (O, I, k, k) already gain-scaled, styles (N, I). Same padding.
    """
    y = F.conv2d(x * styles[:, :, None, None], weight, padding=weight.shape[-1] // 2)
    if demodulate:
        d = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).T + eps)  # (N, O)
        y = y * d[:, :, None, None]
    return y


def modulated_conv2d_grouped(x, weight, styles, demodulate=True, eps=1e-8):
    """The reference (StyleGAN2) form: per-sample weights and one grouped convolution. For tests and comparison."""
    n, cin, h, w = x.shape
    wts = weight[None] * styles[:, None, :, None, None]  # (N, O, I, k, k)
    if demodulate:
        wts = wts * torch.rsqrt(wts.square().sum((2, 3, 4), keepdim=True) + eps)
    kernels = wts.reshape(-1, cin, *weight.shape[2:])
    y = F.conv2d(x.reshape(1, n * cin, h, w), kernels, groups=n, padding=weight.shape[-1] // 2)
    return y.reshape(n, -1, h, w)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally after a 2x bilinear upsample), noise, bias, lrelu * sqrt 2."""

    def __init__(self, cin, cout, w_dim, resolution, up=False):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.gain, self.up, self.resolution = 1 / math.sqrt(cin * 9), up, resolution

    def forward(self, x, w, noise_mode="random"):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight * self.gain, self.affine(w))
        if noise_mode == "random":
            x = (
                x
                + torch.randn(len(x), 1, self.resolution, self.resolution, device=x.device)
                * self.noise_strength
            )
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}.")
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * SQRT2


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, no demodulation, plus bias (no activation)."""

    def __init__(self, cin, w_dim, img_channels):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x, w):
        y = modulated_conv2d(x, self.weight, self.affine(w) * self.gain, demodulate=False)
        return y + self.bias[None, :, None, None]


def factor_one_hot(labels, counts) -> torch.Tensor:
    """(N, factors) class indices -> the factors' one-hot vectors side by side (N, sum of `counts`)."""
    return torch.cat([F.one_hot(labels[:, g], c).float() for g, c in enumerate(counts)], dim=1)


def _normalize_2nd_moment(x):
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z -> w: normalise z's second moment, then `layers` lrelu FC layers at the lr multiplier; tracks w_avg.

    With `latent_classes`, z also picks one class per discrete factor (`latent_classes(z)`), whose embedding is
    normalised and concatenated to z before the layers, as StyleGAN2-ADA embeds a conditioning label. The label is
    a function of z, so the generator is still a sampler of z alone: a mixture with one component per class
    combination, each drawn with equal probability.
    """

    def __init__(self, z_dim, w_dim, layers, lr_mul, w_avg_beta=0.995, latent_classes=()):
        super().__init__()
        self.class_counts = tuple(latent_classes)
        self.embed = EqualLinear(sum(self.class_counts), z_dim) if self.class_counts else None
        dims = [z_dim * (2 if self.class_counts else 1)] + [w_dim] * layers
        self.fc = nn.ModuleList(
            EqualLinear(a, b, lr_mul=lr_mul, activation=True) for a, b in itertools.pairwise(dims)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta = w_avg_beta

    def latent_classes(self, z) -> torch.Tensor:
        """(N, factors) class indices: factor g's class is floor(Phi(z[:, g]) * count_g), Phi the standard normal
        CDF, so each class has probability 1 / count_g under z ~ N(0, I) and the factors are independent."""
        counts = torch.tensor(self.class_counts, device=z.device)
        uniform = 0.5 * (1 + torch.erf(z[:, : len(counts)] / SQRT2))
        return torch.minimum((uniform * counts).long(), counts - 1)

    def forward(self, z, truncation_psi=1.0):
        x = _normalize_2nd_moment(z)
        if self.embed is not None:
            x = torch.cat(
                [
                    x,
                    _normalize_2nd_moment(
                        self.embed(factor_one_hot(self.latent_classes(z), self.class_counts))
                    ),
                ],
                1,
            )
        for layer in self.fc:
            x = layer(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisNetwork(nn.Module):
    """w (N, w_dim) or ws (N, num_ws, w_dim) -> image (N, 3, R, R) in about [-1, 1]."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        res, ch, w_dim = resolutions(config.resolution), config.channels, config.w_dim
        self.num_ws = config.num_ws
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.input_map = EqualLinear(w_dim, ch[0] * 16) if config.input_from_w else None
        self.convs = nn.ModuleList([SynthesisLayer(ch[0], ch[0], w_dim, 4)])
        self.torgbs = nn.ModuleList([ToRGB(ch[0], w_dim, config.img_channels)])
        for i in range(1, len(res)):
            self.convs.append(SynthesisLayer(ch[i - 1], ch[i], w_dim, res[i], up=True))
            self.convs.append(SynthesisLayer(ch[i], ch[i], w_dim, res[i]))
            self.torgbs.append(ToRGB(ch[i], w_dim, config.img_channels))

    def forward(self, ws, noise_mode="random"):
        if ws.ndim == 2:
            ws = ws[:, None].expand(-1, self.num_ws, -1)
        x = self.const[None].expand(len(ws), -1, -1, -1)
        if self.input_map is not None:
            x = x + self.input_map(ws[:, 0]).view(x.shape)
        x = self.convs[0](x, ws[:, 0], noise_mode)
        img = self.torgbs[0](x, ws[:, 1])
        k = 2
        for b in range(1, len(self.torgbs)):
            x = self.convs[2 * b - 1](x, ws[:, k], noise_mode)
            x = self.convs[2 * b](x, ws[:, k + 1], noise_mode)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            img = img + self.torgbs[b](x, ws[:, k + 2])
            k += 3
        return img


class Generator(nn.Module):
    """z -> image: `mapping` then `synthesis`. noise_mode 'random' for training, 'const' for repeatable samples."""

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config or GeneratorConfig()
        c = self.config
        self.mapping = MappingNetwork(
            c.z_dim, c.w_dim, c.mapping_layers, c.mapping_lr_mul, latent_classes=c.latent_classes
        )
        self.synthesis = SynthesisNetwork(c)

    def latent_classes(self, z) -> torch.Tensor:
        """The classes z picks (MappingNetwork.latent_classes); only for a generator with latent_classes."""
        if not self.config.latent_classes:
            raise ValueError(
                "this generator has no latent classes (GeneratorConfig.latent_classes is empty)."
            )
        return self.mapping.latent_classes(z)

    def forward(self, z, truncation_psi=1.0, noise_mode="random"):
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode)


# --- files -----------------------------------------------------------------------------------------------------
def config_to_json(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_json(cls, data: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def save_generator(generator: Generator, directory, extra: dict | None = None) -> Path:
    """Write `directory`/model.safetensors (every parameter and buffer) and config.json; returns the folder.

    `extra` (JSON-serialisable) is stored under "extra" in config.json: e.g. what the model was trained or
    unlearnt with. The folder is written in place; callers that need atomicity write to a temp folder and rename.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in generator.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt", "model": "canvas-gan"})
    data = {"architecture": "stylegan2-lite", **config_to_json(generator.config)}
    if extra:
        data["extra"] = extra
    (directory / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return directory


def load_generator(directory, device="cpu") -> Generator:
    """The generator saved by save_generator (safetensors + config.json), in eval mode."""
    directory = Path(directory)
    config = config_from_json(GeneratorConfig, json.loads((directory / CONFIG_FILE).read_text()))
    generator = Generator(config)
    generator.load_state_dict(load_file(directory / WEIGHTS_FILE))
    return generator.to(device).eval()
