"""Throughput and memory benchmarks (``make bench``); helpers shared by their modules."""

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timer around it measures it (a no-op on
    the CPU, whose ops run synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
