"""Forward passes for the scheduler: a prompt into one cache row, then one token for each of
the first n rows per step.

`EagerStepper` runs the model directly, attending over just the filled part of the cache, and
when every row sits at the same position (one prompt's samples) without any mask: the fastest on
CPU (torch.compile of this step measured 10x slower there, so it is not offered).
`GraphStepper` uses the model's fixed-shape step (`GPT2.forward_rows` over the whole window) and,
on CUDA, captures it once per batch size in a CUDA graph and replays it every token, removing
the per-kernel launch cost that dominates small-batch GPU decoding.
"""

from __future__ import annotations

import torch

from gpt2cli.model.gpt2 import GPT2


class EagerStepper:
    """Rows at different positions attend over keys [0, end) with a mask, so a shorter row also
    reads positions past its own length (with weight 0). Those must hold finite numbers: 0 * NaN
    is NaN, and a cache from `torch.empty` may hold anything. `finite[r]` is how far row r is
    known to hold finite keys and values (written, or zeroed here just before it is read), so
    only the positions actually reached are ever touched (zeroing whole rows would make every
    row cost the whole window in memory)."""

    def __init__(self, model: GPT2, batch: int) -> None:
        self.model = model
        self.window = model.config.n_positions
        self.cache = model.new_cache(batch, zeroed=self.zeroed)
        self.finite = [self.window if self.zeroed else 0] * batch

    zeroed = False

    @property
    def batch(self) -> int:
        return self.cache.batch

    def prefill(self, row: int, ids: torch.Tensor) -> torch.Tensor:
        """Run `ids` (T,) from position 0 in cache row `row`; the (vocab,) logits of the last."""
        view = self.cache.rows(row, row + 1)
        view.length = 0
        self.finite[row] = max(self.finite[row], len(ids))
        return self.model(ids.view(1, -1), view)[0]

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Rows `targets` start with row `source`'s first `length` positions (one prompt
        prefilled once for several samples)."""
        self.cache.copy_prefix(source, targets, length)
        for t in targets:
            self.finite[t] = max(self.finite[t], length)

    def decode(self, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """One token per row for rows [0, n): row b's `tokens[b]` at `positions[b]`. Returns
        (n, vocab) logits."""
        n = len(positions)
        if max(positions) >= self.window:
            raise ValueError("the window is full")
        view = self.cache.rows(0, n)
        end = max(positions) + 1
        if min(positions) == max(positions):  # all rows at one position: no mask needed
            view.length = positions[0]
            logits = self.model(tokens.view(n, 1), view)
        else:
            self._make_finite(n, end)
            at = torch.tensor(positions, device=tokens.device)
            logits = self.model.forward_rows(tokens, at, view, end=end)
        for r in range(n):
            self.finite[r] = max(self.finite[r], end)
        return logits

    def _make_finite(self, rows: int, end: int) -> None:
        for r in range(rows):
            if self.finite[r] < end:
                self.cache.clear(r, self.finite[r], end)
                self.finite[r] = end


class GraphStepper(EagerStepper):
    """Fixed-shape decoding; `capture=True` (CUDA only) records each batch size's step as a CUDA
    graph the first time it is used."""

    zeroed = True  # attention reads the whole window (masked): 0 * NaN garbage would be NaN

    def __init__(self, model: GPT2, batch: int, capture: bool | None = None) -> None:
        super().__init__(model, batch)
        device = model.wpe.device
        self.capture = device.type == "cuda" if capture is None else capture
        self.idx = torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def decode(self, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
        n = len(positions)
        if max(positions) >= self.window:
            raise ValueError("the window is full")
        self.idx[:n].copy_(tokens)
        self.pos[:n].copy_(torch.tensor(positions))
        if not self.capture:
            return self._step(n)
        if n not in self.graphs:
            self.graphs[n] = self._capture(n)
        graph, logits = self.graphs[n]
        graph.replay()
        return logits

    def _step(self, n: int) -> torch.Tensor:
        return self.model.forward_rows(self.idx[:n], self.pos[:n], self.cache.rows(0, n))

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs write these same positions, which the replay then overwrites.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(n)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._step(n)
        return graph, logits


def make_stepper(model: GPT2, batch: int, *, cuda_graphs: bool | None = None) -> EagerStepper:
    """The best driver for the model's device: CUDA graphs on CUDA (unless turned off)."""
    on_cuda = model.wpe.device.type == "cuda"
    if cuda_graphs if cuda_graphs is not None else on_cuda:
        return GraphStepper(model, batch, capture=on_cuda)
    return EagerStepper(model, batch)
