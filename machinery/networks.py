"""Stage 10's small ResNet (helpers.NETWORKS names it "improved") and stage 11's sprint network
for two CPU cores ("sprint"); notebooks 10 and 11 explain them."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm adds its own), BatchNorm, ReLU; keeps height and
    width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_pool_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, 2x2 max-pool, BatchNorm, ReLU: pooling first leaves a quarter of the
    values to normalise."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                         nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two convolutions whose output is added to their input: x + f(x) (a ResNet's building
    block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels),
                                  conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the block only has to learn a correction to x: deep nets train easily
        return x + self.body(x)


class ImprovedCNN(nn.Module):
    """Stage 10's network: a small ResNet (the ResNet-9 shape), 261,298 parameters.

    Differences from FMnistCNN: two convolutions at full 28x28 resolution, residual blocks, and a
    global max-pool instead of the big linear layer -- the parameters go into convolutions.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width), conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),  # -> 48x14x14
            ResidualBlock(2 * width),
            conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),                     # -> 96x7x7
            ResidualBlock(4 * width),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())                                   # -> 96
        self.classifier = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SprintCNN(nn.Module):
    """Stage 11's sprint network: five convolutions, only the first at full size, 269,498
    parameters.

    On two CPU cores the time of the three networks notebook 11 times follows the size of their
    layers' outputs more than their multiply-adds (three networks, not a law), so three of the
    five convolutions are pooled at once, before BatchNorm and ReLU (airbench's order): those then
    touch a quarter of the values. The one convolution at full size has 16 channels: with 32, a
    run took a third longer and scored within the seeds' spread (README, "The sprint").
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_pool_bn_relu(1, 16),                             # -> 16x14x14
            conv_pool_bn_relu(16, 64), conv_bn_relu(64, 64),      # -> 64x7x7
            conv_pool_bn_relu(64, 128), conv_bn_relu(128, 128),   # -> 128x3x3
            nn.AdaptiveMaxPool2d(1), nn.Flatten())                # -> 128
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
