"""Step drivers for the decode loop: prefill once, then one token per sample per step.

`EagerDecoder` runs the model directly, attending over just the filled part of the cache: the
fastest on CPU (torch.compile of this step measured 10x slower there, so it is not offered).
`GraphDecoder` uses the model's static-shape step and, on CUDA, captures it once in a CUDA graph
and replays it every token, removing the per-kernel launch cost that dominates small-batch GPU
decoding.
"""

from __future__ import annotations

import torch

from gpt2cli.model import GPT2


class EagerDecoder:
    def __init__(self, model: GPT2, batch: int) -> None:
        self.model = model
        self.cache = model.new_cache(batch)

    @property
    def length(self) -> int:
        return self.cache.length

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, self.cache)

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        return self.model(next_ids.view(-1, 1), self.cache)


class GraphDecoder:
    """Static-shape decoding; `capture=True` (CUDA only) records the step as a CUDA graph."""

    def __init__(self, model: GPT2, batch: int, capture: bool | None = None) -> None:
        device = model.wpe.device
        self.model = model
        self.cache = model.new_cache(batch, zeroed=True)
        self.idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.capture = device.type == "cuda" if capture is None else capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.cache.length

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids, self.cache)
        self.pos.fill_(self.cache.length)
        return logits

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.model.config.n_positions:
            raise ValueError("the window is full")
        self.idx.copy_(next_ids.view(-1, 1))
        if self.capture:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self.logits
        else:
            logits = self.model.forward_static(self.idx, self.pos, self.cache)
        self.pos += 1
        self.cache.length += 1
        return logits

    def _capture(self) -> None:
        # Warm-up runs write this same position, which the replay then overwrites.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model.forward_static(self.idx, self.pos, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.model.forward_static(self.idx, self.pos, self.cache)


def make_decoder(
    model: GPT2, batch: int, *, cuda_graphs: bool | None = None
) -> EagerDecoder | GraphDecoder:
    """The best driver for the model's device: CUDA graphs on CUDA (unless turned off)."""
    on_cuda = model.wpe.device.type == "cuda"
    if cuda_graphs if cuda_graphs is not None else on_cuda:
        return GraphDecoder(model, batch, capture=on_cuda)
    return EagerDecoder(model, batch)
