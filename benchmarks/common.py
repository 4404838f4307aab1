"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import lightning as L
import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads"


def timeit(fn: Callable[[], object], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds (synchronising CUDA around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class TrainClock(L.Callback):
    """Wall time of a ``Trainer.fit`` from the start of training batch ``warmup`` to the end of training (CUDA
    synchronised at both ends): ``clock.stop - clock.start`` seconds for the batches after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.stop = int(warmup), None, None

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, index) -> None:
        if index == self.warmup:
            self._sync(module)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        self.stop = time.perf_counter()
