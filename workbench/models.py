"""Model architectures named by `[[training]]` blocks, built from MONAI networks ready for Opacus (DP-SGD).

`cnn` (default for images): a 4×4 patchify MONAI convolution block then a 3×3 one (GroupNorm,
ReLU), ~1.4k parameters, chosen so that DP-SGD costs at most about twice plain training;
`maxpool_cnn`: two 3×3 MONAI convolution blocks at full resolution and a global max pool, ~700
parameters: it finds a small bright finding anywhere in the image (the demo's lesions), and few
parameters keep DP-SGD's noise small relative to the signal on a small archive;
`densenet_small`: a MONAI DenseNet of 3 short dense blocks; `densenet121`: MONAI's DenseNet121;
`unet` (segmentation): a 3-D MONAI U-Net (8, 16, 32 channels, two halvings, ~29k parameters) on a
whole resampled volume, so that one sample, and the unit DP-SGD protects, is one patient's series.

Opacus computes per-sample gradients, so BatchNorm (which mixes samples) is replaced by
GroupNorm and activations run out of place. Coordinator and nodes build the same network
from the same name.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DenseNet, DenseNet121, UNet
from opacus.validators import ModuleValidator
from torch import nn

CLASSES = 2


def build(architecture: str, features: int = 0) -> nn.Module:
    """A fresh network; `features` is the input width of the table models."""
    torch.manual_seed(0)  # the same initial weights at the coordinator, whatever process builds them
    if architecture == "logistic":
        return nn.Linear(features, CLASSES)
    if architecture == "mlp":
        return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    activation = ("relu", {"inplace": False})
    if architecture == "cnn":
        # A 4×4 stride-4 "patchify" first layer: per-sample gradients of a convolution unfold its input,
        # which costs k² times the input for overlapping kernels but only the input itself here.
        # GroupNorm (not BatchNorm, which mixes samples) keeps DP training stable across scanners.
        norm = ("group", {"num_groups": 4})
        return nn.Sequential(
            Convolution(2, 1, 8, kernel_size=4, strides=4, padding=0, act=activation, norm=norm),
            Convolution(2, 8, 16, kernel_size=3, act=activation, norm=norm), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES),
        )  # fmt: skip
    if architecture == "maxpool_cnn":
        norm = ("group", {"num_groups": 4})
        return nn.Sequential(
            Convolution(2, 1, 8, kernel_size=3, act=activation, norm=norm),
            Convolution(2, 8, 8, kernel_size=3, act=activation, norm=norm),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
        )  # fmt: skip
    if architecture == "unet":
        return UNet(spatial_dims=3, in_channels=1, out_channels=CLASSES, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=0, act=activation, norm=("group", {"num_groups": 4}))  # fmt: skip
    if architecture == "densenet_small":
        network: nn.Module = DenseNet(
            spatial_dims=2, in_channels=1, out_channels=CLASSES, init_features=16, growth_rate=8,
            block_config=(2, 3, 2), bn_size=2, act=activation,
        )  # fmt: skip
    elif architecture == "densenet121":
        network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=CLASSES, act=activation)
    else:
        raise ValueError(f"unknown model '{architecture}'")
    return ModuleValidator.fix(network)
