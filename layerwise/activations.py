"""Where a block's calibration activations live between forwards: on the device when they fit, else
in pinned host memory with the copies overlapped.

The inputs of one block for n sequences of length L are n · L · hidden values in the model's dtype:
128 × 2048 tokens of a Llama-3-8B (hidden 4096, bf16) are 2 GiB, of a 70B (hidden 8192) 4 GiB, and a
block's inputs and outputs are held at once (twice that). ``"auto"`` keeps them on the device when
that fits in ``DEVICE_SHARE`` of the device memory free at capture time (the rest is the solver's),
otherwise in pinned host memory (:class:`HostBatches`): each mini-batch is copied to the device on a
side stream while the previous one runs through the block, and each output is copied back on that
stream as soon as it is computed, so the copies overlap the forwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from layerprune.layerwise.errors import LayerwiseError

PLACES = ("auto", "device", "host")
DEVICE_SHARE = 0.5  # "auto": activations (inputs and outputs) on the device up to this share of its free memory


def check_place(place: str) -> None:
    if place not in PLACES:
        raise LayerwiseError(f"activations must be one of {', '.join(PLACES)}, got {place!r}")


def on_device(place: str, device: torch.device, nbytes: int, streams: int = 1) -> bool:
    """Whether a block's activations of ``nbytes`` (one stream: its inputs) stay on ``device``: always
    for ``"device"``, never for ``"host"`` (on a CPU device too: :class:`HostBatches` then copies);
    ``"auto"``: on a CPU device, or when inputs and outputs of every stream (2 · streams · nbytes;
    ``streams`` = 2 with dense targets) fit in ``DEVICE_SHARE`` of the free device memory."""
    check_place(place)
    if place != "auto":
        return place == "device"
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * streams * nbytes <= DEVICE_SHARE * free


class HostBatches:
    """Mini-batches (b × seqlen × hidden) kept in pinned host memory and handed out on ``device``.

    ``append(t)`` copies a device tensor out on a side stream (after the work that produced it);
    iterating yields batch i on the device while batch i + 1 is being copied in on that stream; both
    directions run on the one side stream, so a batch is never read before it is written. On a CPU
    device the batches are plain host tensors (no streams), so the same code runs everywhere.
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.items: list[torch.Tensor] = []
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.items)

    def append(self, t: torch.Tensor) -> None:
        if self.stream is None:
            self.items.append(t.detach().to("cpu", copy=True))
            return
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(t.detach(), non_blocking=True)
        t.record_stream(self.stream)  # its memory is not reused before the copy is done
        self.items.append(host)

    def _fetch(self, index: int):
        host = self.items[index]
        if self.stream is None:
            return host, None
        with torch.cuda.stream(self.stream):
            moved = host.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(self.stream)
        return moved, done

    def _ready(self, fetched) -> torch.Tensor:
        moved, done = fetched
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            moved.record_stream(current)
        return moved

    def __iter__(self) -> Iterator[torch.Tensor]:
        ahead = self._fetch(0) if self.items else None
        for index in range(len(self.items)):
            fetched, ahead = ahead, (self._fetch(index + 1) if index + 1 < len(self.items) else None)
            yield self._ready(fetched)

    def __getitem__(self, index: int | slice):
        """Batch ``index`` on the device; a slice: a ``HostBatches`` holding those batches (no copies)."""
        if isinstance(index, slice):
            view = HostBatches.__new__(HostBatches)
            view.device, view.stream, view.items = self.device, self.stream, self.items[index]
            return view
        return self._ready(self._fetch(index))


def batches_like(hidden) -> list | HostBatches:
    """An empty container of the same kind as ``hidden`` (a list on the device, or :class:`HostBatches`)."""
    return HostBatches(hidden.device) if isinstance(hidden, HostBatches) else []
