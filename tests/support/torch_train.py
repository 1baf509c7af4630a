"""A plain training script with a PyTorch DataLoader whose workers log (tests/runtime/test_torch.py).

``python torch_train.py DB [EPOCHS] [SLEEP_S]``: init_db(DB) (skipped when DB is "-"), a DataLoader
with 2 persistent workers, each item logged from the worker, one epoch metric per epoch from the
main process, ``SLEEP_S`` seconds per batch. Ends without shutdown_db(): interpreter exit closes
the store, as a script that forgets it does.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

import aetherium_hpc as ah


class Items(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        ah.log_training_epoch_metric("item", float(i), round_number=0, epoch_number=i)
        return torch.tensor([float(i)])


def train(epochs: int, sleep_s: float) -> None:
    loader = DataLoader(Items(), batch_size=8, num_workers=2, persistent_workers=True)
    for epoch in range(epochs):
        total = 0.0
        for batch in loader:
            total += float(batch.sum())
            time.sleep(sleep_s)
        ah.log_training_epoch_metric("loss", 1.0 / (epoch + 1), round_number=1, epoch_number=epoch)
        print(f"epoch {epoch} done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] != "-":
        ah.init_db(sys.argv[1])
    train(int(sys.argv[2]) if len(sys.argv) > 2 else 2, float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
