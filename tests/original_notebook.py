"""The original notebook's network, transcribed as it was (functional dropout bug included).

Used by the tests to produce a state_dict exactly as the original notebook saved it.
"""
import torch.nn as nn
import torch.nn.functional as F


class FMnist_CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_block1 = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3, padding=1),
            nn.BatchNorm2d(num_features=32), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=2))
        self.conv_block2 = nn.Sequential(
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3, padding=1),
            nn.BatchNorm2d(num_features=64), nn.Dropout(0.2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))
        self.conv_block3 = nn.Sequential(
            nn.Conv2d(in_channels=64, out_channels=128, kernel_size=3, padding=1),
            nn.BatchNorm2d(num_features=128), nn.Dropout(0.4), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))
        self.linear1 = nn.Linear(in_features=128 * 3 * 3, out_features=128)
        self.batch_norm = nn.BatchNorm1d(num_features=128)
        self.linear2 = nn.Linear(in_features=128, out_features=10)

    def forward(self, x):
        x = self.conv_block3(self.conv_block2(self.conv_block1(x)))
        x = self.batch_norm(self.linear1(x.view(-1, 128 * 3 * 3)))
        return self.linear2(F.relu(F.dropout(x, 0.5)))
