"""Host-to-device copies that do not stall the host."""

from __future__ import annotations

import torch


def send_to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. For a CUDA device it is copied to page-locked memory and sent
    without blocking the host: a copy from ordinary memory waits for the GPU to drain its queue, so
    the host could not prepare the next work while the last still runs."""
    if t.device.type != "cpu" or not str(device).startswith("cuda"):
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
