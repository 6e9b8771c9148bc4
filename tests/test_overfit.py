"""The CS231n sanity check: a small SSC-Net can memorise 20 images."""
import numpy as np

import minissc.functional as F
from minissc import Tensor, manual_seed, nn
from minissc.optim import SGD


def small_ssc_net(classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 18, 3, padding=1, bias=False), nn.BatchNorm2d(18), nn.ReLU(),
        nn.SSCConv2d(18, 18, 3, group_size=9), nn.BatchNorm2d(18), nn.ReLU(),
        nn.ChannelShuffle(2),
        nn.SSCConv2d(18, 36, 3, stride=2, group_size=9), nn.BatchNorm2d(36), nn.ReLU(),
        nn.GlobalAvgPool2d(), nn.Linear(36, classes))


def test_small_ssc_net_overfits_twenty_images():
    manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((20, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    model = small_ssc_net()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.0)
    for step in range(300):
        loss = F.cross_entropy(model(Tensor(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    model.eval()
    predictions = model(Tensor(images)).data.argmax(axis=1)
    assert (predictions == labels).mean() == 1.0, (step, loss.item())
    assert loss.item() < 0.05
