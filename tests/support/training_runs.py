"""What the training tests share: a tiny network and data set whose every random stream (dropout,
shuffling, augmentation) a checkpoint must carry, and two checkpoints of one run compared bit for
bit."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from sparseforce import data as sfdata


class Net(nn.Module):
    """Conv + BN (running statistics) + dropout (draws from the global torch RNG)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


def make_data():
    # A random crop with its own generator, so the augmentation stream must be checkpointed too.
    gen = torch.Generator().manual_seed(7)
    aug = sfdata.Compose([sfdata.RandomCrop(8, padding=1, generator=gen)])
    train = Subset(sfdata.Digits(train=True, transform=aug), range(160))
    test = Subset(sfdata.Digits(train=False), range(64))
    val = Subset(sfdata.Digits(train=True), range(160, 200))
    return train, val, test



def assert_same_run(a: dict, b: dict):
    """Weights, masks, optimizer state, the dst object's state and the history (but its times)."""
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for n, m in a["masks"]["masks"].items():
        assert torch.equal(m, b["masks"]["masks"][n]), n
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]) if isinstance(v, torch.Tensor) else v == sb[i][k], (i, k)
    assert a["dst"]["state"] == b["dst"]["state"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
