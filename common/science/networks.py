"""The four architectures of A.2 with the options of Sec 6.2.

``build_network(arch, obs_shape, num_outputs, ...)`` returns a ``Network``: ``torso`` (input to penultimate
features, exposed by ``features``) followed by ``head``, the last linear layer (reset by name). Images may be
uint8 (scaled by 1/255 here) or float. The output is ``(N, num_outputs)`` values, or ``(N, num_outputs,
num_bins)`` logits with a two-hot head; ``values(out)`` and ``loss(out, targets)`` hide the difference.

Options: ``layer_norm`` puts a normalisation after each hidden layer, before its activation (LayerNorm on
dense layers; GroupNorm with one group, i.e. LayerNorm over (C, H, W), on conv layers, where ResNet-18 uses it in
place of BatchNorm); ``spectral_norm`` wraps the first layer (Gogianu et al., 2021); ``two_hot`` a ``TwoHot``.
``eval_mode(network)`` evaluates a network in eval mode and puts its mode back.
"""
import contextlib

import torch
import torchvision
from torch import nn

ARCHITECTURES = ("mlp", "cnn", "resnet18", "vit")


@contextlib.contextmanager
def in_mode(model, train):
    """Run the block with ``model`` in train (``train=True``) or eval mode, then put its mode back."""
    was_training = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)


def eval_mode(model):
    """Evaluate ``model`` in eval mode (BatchNorm uses its running statistics, no dropout), then restore its mode."""
    return in_mode(model, False)


class TwoHot(nn.Module):
    """Two-hot encoding of scalars on a fixed support of ``num_bins`` points in ``[vmin, vmax]`` (Sec 6.2).

    ``encode(y)`` puts the mass of each (clipped) scalar on its two neighbouring support points so that the
    expectation is ``y``; ``decode(logits)`` is the expectation of ``softmax(logits)``; ``loss`` is the
    cross-entropy between the logits and the encoded targets. A module, so its support moves with the network.
    """

    def __init__(self, vmin, vmax, num_bins):
        super().__init__()
        if not vmin < vmax or num_bins < 2:
            raise ValueError(f"TwoHot needs vmin < vmax and num_bins >= 2, got {vmin}, {vmax}, {num_bins}")
        self.vmin, self.vmax, self.num_bins = vmin, vmax, num_bins
        self.register_buffer("support", torch.linspace(vmin, vmax, num_bins))

    def encode(self, y):
        """``(...,)`` scalars to ``(..., num_bins)`` probabilities."""
        y = y.clamp(self.vmin, self.vmax)
        position = (y - self.vmin) / (self.vmax - self.vmin) * (self.num_bins - 1)
        lower = position.floor().clamp_max(self.num_bins - 2)
        upper_weight = (position - lower).unsqueeze(-1)
        lower_hot = nn.functional.one_hot(lower.long(), self.num_bins).to(y.dtype)
        upper_hot = nn.functional.one_hot(lower.long() + 1, self.num_bins).to(y.dtype)
        return lower_hot * (1 - upper_weight) + upper_hot * upper_weight

    def decode(self, logits):
        """``(..., num_bins)`` logits to ``(...,)`` expected values."""
        return logits.softmax(-1) @ self.support

    def loss(self, logits, y):
        """Cross-entropy to the two-hot encoding of ``y``, one value per scalar."""
        return -(self.encode(y) * logits.log_softmax(-1)).sum(-1)


class Network(nn.Module):
    def __init__(self, torso, feature_dim, num_outputs, two_hot=None):
        super().__init__()
        self.torso, self.num_outputs, self.two_hot = torso, num_outputs, two_hot
        self.head = nn.Linear(feature_dim, num_outputs * (two_hot.num_bins if two_hot else 1))

    def features(self, x):
        """Penultimate features (the input of ``head``)."""
        if x.dtype == torch.uint8:
            x = x.to(self.head.weight.dtype) / 255.0  # float32, or float64 in the equivalence tests
        return self.torso(x)

    def forward(self, x):
        out = self.head(self.features(x))
        return out.unflatten(-1, (self.num_outputs, -1)) if self.two_hot else out

    def values(self, out):
        """Scalar predictions ``(N, num_outputs)`` from the output of ``forward``."""
        return self.two_hot.decode(out) if self.two_hot else out

    def loss(self, out, targets):
        """Elementwise loss of the output against scalar ``targets``: squared error, or two-hot cross-entropy."""
        return self.two_hot.loss(out, targets) if self.two_hot else (out - targets).square()


def build_network(arch, obs_shape, num_outputs, *, width=512, layer_norm=False, spectral_norm=False,
                  two_hot=None, vit_heads=8):
    """Build one of ``mlp``, ``cnn``, ``resnet18``, ``vit`` for ``obs_shape = (C, H, W)`` images.

    ``width`` is in MLP units (A.2: 512). The MLP's two hidden layers have ``width`` units. The CNN scales A.2's
    sizes by ``width / 512``: both convolutions get ``round(64 * width / 512)`` channels and both dense layers
    ``round(256 * width / 512)`` units (at least 1), so 512 is A.2's CNN and Fig 5's widths scale it alike.
    ResNet-18 and the ViT ignore ``width`` (A.2 sweeps only the MLP and the CNN).
    """
    channels, height, width_px = obs_shape
    if arch == "mlp":
        torso, feature_dim = mlp_torso(channels * height * width_px, width, layer_norm), width
    elif arch == "cnn":
        conv_channels, feature_dim = (max(1, round(size * width / 512)) for size in (64, 256))
        torso = cnn_torso(obs_shape, layer_norm, conv_channels, feature_dim)
    elif arch == "resnet18":
        torso, feature_dim = resnet18_torso(channels, layer_norm), 512
    elif arch == "vit":
        torso, feature_dim = ViT(obs_shape, layer_norm=layer_norm, heads=vit_heads), 256
    else:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if spectral_norm:
        apply_spectral_norm_to_first_layer(torso)
    return Network(torso, feature_dim, num_outputs, two_hot)


def _dense(n_in, n_out, layer_norm):
    return [nn.Linear(n_in, n_out)] + ([nn.LayerNorm(n_out)] if layer_norm else []) + [nn.ReLU()]


def _conv(c_in, c_out, kernel, layer_norm):
    return [nn.Conv2d(c_in, c_out, kernel)] + ([nn.GroupNorm(1, c_out)] if layer_norm else []) + [nn.ReLU()]


def mlp_torso(num_inputs, width=512, layer_norm=False):
    """A.2: two hidden layers of ``width`` (512 by default; 16 x {1..16} in the width sweep)."""
    return nn.Sequential(nn.Flatten(), *_dense(num_inputs, width, layer_norm), *_dense(width, width, layer_norm))


def cnn_torso(obs_shape, layer_norm=False, conv_channels=64, dense_width=256):
    """A.2: 5x5 then 3x3 convolutions with 64 channels, then two dense layers of 256.

    Stride 1 and no padding or pooling: A.2 names none. On 28x28 inputs the first dense layer sees 64x22x22.
    """
    channels, height, width = obs_shape
    flat = conv_channels * (height - 6) * (width - 6)
    return nn.Sequential(*_conv(channels, conv_channels, 5, layer_norm),
                         *_conv(conv_channels, conv_channels, 3, layer_norm), nn.Flatten(),
                         *_dense(flat, dense_width, layer_norm), *_dense(dense_width, dense_width, layer_norm))


def resnet18_torso(channels, layer_norm=False):
    """torchvision's ResNet-18 for small images: a 3x3 stride-1 stem without max-pooling (the usual CIFAR
    adaptation), ``channels`` inputs, and its classifier removed (features are the 512 pooled channels)."""
    norm_layer = (lambda c: nn.GroupNorm(1, c)) if layer_norm else None
    net = torchvision.models.resnet18(norm_layer=norm_layer)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class ViT(nn.Module):
    """A.2: a Vision Transformer (Dosovitskiy et al., 2020) with patch size 3, model dim 256, feed-forward 1024,
    one pre-norm block, dropout 0.1, a class token and learned positions; features are the normalised class token.

    Patches do not overlap: 28-pixel images give 9x9 patches (the last row and column are dropped), 32-pixel
    ones 10x10. A.2 gives no head count; we use 8 (head dim 32). ``layer_norm`` adds a LayerNorm after the patch
    embedding (the block's own LayerNorms are always there).
    """

    def __init__(self, obs_shape, patch=3, dim=256, ff_dim=1024, heads=8, dropout=0.1, layer_norm=False):
        super().__init__()
        channels, height, width = obs_shape
        num_patches = (height // patch) * (width // patch)
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.dropout = Dropout(dropout)
        self.block = TransformerBlock(dim, heads, ff_dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        tokens = self.embed_norm(self.embed(x).flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = self.block(self.dropout(tokens + self.positions))
        return self.norm(tokens[:, 0])


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and GELU feed-forward, each with a residual connection. Written out (rather than
    nn.TransformerEncoderLayer, whose fast paths do not vmap) so that the probe can vmap over stacked copies."""

    def __init__(self, dim, heads, ff_dim, dropout):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), Dropout(dropout), nn.Linear(ff_dim, dim))
        self.drop, self.attn_drop = Dropout(dropout), Dropout(dropout)

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        # Written out rather than scaled_dot_product_attention, which has no vmap batching rule on the CPU.
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        attention = self.attn_drop(weights) @ v
        x = x + self.drop(self.proj(attention.transpose(1, 2).flatten(2)))
        return x + self.drop(self.ff(self.norm2(x)))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks can come from the caller (``supplied_masks``). Copies stacked under vmap cannot
    each draw from their own RNG, so code that trains them (``common.runtime.seeds``, ``common.science.probe``) draws every copy's
    masks from that copy's own generator (``draw_masks``) and supplies them; a plain call supplied the same masks
    computes the same thing. Without supplied masks it is ``nn.Dropout``."""

    supply = None  # while set: a function (module, x) -> the mask of this call, already scaled by 1 / (1 - p)

    def forward(self, x):
        if self.training and self.p > 0 and Dropout.supply is not None:
            return x * Dropout.supply(self, x)
        return super().forward(x)


@contextlib.contextmanager
def _supplying(supply):
    previous, Dropout.supply = Dropout.supply, supply
    try:
        yield
    finally:
        Dropout.supply = previous


def supplied_masks(masks):
    """Within the block, the dropout calls of train-mode forwards take ``masks`` in call order (one forward's)."""
    masks = iter(masks)
    return _supplying(lambda module, x: next(masks))


@torch.no_grad()
def dropout_calls(network, x):
    """``[(shape, dtype, p)]`` of each dropout call of ``network``'s train-mode forward on ``x``, in call order
    ([] without dropout); it draws no random numbers."""
    calls = []

    def record(module, h):
        calls.append((tuple(h.shape), h.dtype, module.p))
        return torch.ones((), dtype=h.dtype, device=h.device)

    if any(isinstance(m, Dropout) and m.p > 0 for m in network.modules()):
        with _supplying(record), in_mode(network, True):
            network(x)
    return calls


def draw_masks(calls, generator, copies=()):
    """Dropout masks for ``calls`` (``dropout_calls``), scaled by 1 / (1 - p), drawn from ``generator``; with
    ``copies = (K,)`` each mask gets a leading axis of K copies."""
    return [torch.empty(copies + shape, dtype=dtype, device=generator.device).bernoulli_(1 - p, generator=generator)
            .div_(1 - p) for shape, dtype, p in calls]


class SpectralNorm(nn.Module):
    """Divide a layer's weight by its spectral norm, estimated with one power-iteration step per training forward
    (as torch's spectral_norm). Our own so that the power-iteration vector is a plain buffer updated by
    ``copy_``, which works under torch.func.vmap over stacked copies."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        weight = layer.weight.detach().flatten(1)
        u = nn.functional.normalize(torch.randn(weight.shape[0]), dim=0)
        self.register_buffer("u", u)

    def forward(self, x):
        weight = self.layer.weight.flatten(1)
        with torch.no_grad():
            v = nn.functional.normalize(weight.T @ self.u, dim=0)
            u = nn.functional.normalize(weight @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        sigma = u @ weight @ v
        w = self.layer.weight / sigma
        if isinstance(self.layer, nn.Conv2d):
            return nn.functional.conv2d(x, w, self.layer.bias, self.layer.stride, self.layer.padding)
        return nn.functional.linear(x, w, self.layer.bias)


def apply_spectral_norm_to_first_layer(torso):
    """Wrap the first Linear or Conv2d of ``torso`` in ``SpectralNorm``."""
    for module in torso.modules():
        for name, child in module.named_children():
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                setattr(module, name, SpectralNorm(child))
                return
    raise ValueError("no Linear or Conv2d layer to apply spectral norm to")


class MinAtarQNetwork(nn.Module):
    """Young & Tian (2019)'s MinAtar DQN network (examples/dqn.py): conv 16 3x3 stride 1 -> ReLU -> 128 -> ReLU ->
    a linear head, PyTorch's default initialisation. With ``layer_norm`` a normalisation sits between each hidden
    layer and its ReLU, as in the ALE agent (Sec 6.3): GroupNorm with one group (LayerNorm over (C, H, W)) on the
    conv, LayerNorm on the dense layer. Input: (N, C, 10, 10) or replay stacks (N, 1, C, 10, 10) of 0/1 uint8."""

    def __init__(self, in_channels, num_actions, layer_norm, channels_last=False):
        super().__init__()
        self.torso = nn.Sequential(*_conv(in_channels, 16, 3, layer_norm), nn.Flatten(),
                                   *_dense(8 * 8 * 16, 128, layer_norm))
        self.head = nn.Linear(128, num_actions)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, states):
        x = states.reshape(-1, *states.shape[-3:]).to(self.head.weight.dtype)
        return self.head(self.torso(x.contiguous(memory_format=self.memory_format)))
