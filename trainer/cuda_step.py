"""A training step captured once as a CUDA graph and replayed, for one fixed batch size.

Why: a step of the torch path at 4 layers issues 190-311 small kernels (counted), and at
the seed's sizes their launch overhead, not the GPU's arithmetic, sets the step time.
Replaying a graph launches them all at once. The step is the one trainer.loop runs
(forward, cross-entropy, backward, Adam) on the batch `x[idx]`, `y[idx]`, with the indices
copied into a static buffer; a shorter last batch of an epoch runs eagerly on the same
parameters, gradients and optimizer state (`run` does both).

Capture needs: a CUDA device; Adam with `capturable=True` (trainer.device.make_optimizer),
so its step count lives on the GPU; every kernel on torch's current stream (difflogic's as
patched by deploy/patch_difflogic.py: unpatched, it syncs the device after every launch,
which a capture refuses); no host reads of device values inside the step. Warm-up steps
(on a side stream, as capture requires) would train the model, so the parameters, Adam's
state and the CUDA generator are put back afterwards: the first replay is the first step.

Whether this is faster than the eager step on a given GPU and size is measured by
bench/gpu_check.sh (stage `steps`); the trainer uses it only where that says so.
"""

from __future__ import annotations

import torch

WARMUP_STEPS = 3


def _loss(
    model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = model(xb.float())
    return torch.nn.functional.cross_entropy(scores, yb), scores


def eager_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """trainer.loop's step, except that gradients are zeroed in place (kept, not set to
    None): after a capture they are the graph's static buffers. Returns (loss, scores)."""
    loss, scores = _loss(model, xb, yb)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    return loss, scores


class CapturedStep:
    """`run(idx)`: one step on x[idx], y[idx]; a graph replay when len(idx) is the batch
    size this was built for, else eager_step. Returns (loss, scores): the graph's static
    outputs, valid until the next call."""

    def __init__(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
    ) -> None:
        if x.device.type != "cuda":
            raise ValueError(f"a captured step needs a CUDA device, not {x.device.type}")
        if not all(group.get("capturable") for group in opt.param_groups):
            raise ValueError("a captured step needs Adam(capturable=True)")
        self.model, self.opt, self.x, self.y = model, opt, x, y
        self.batch_size = batch_size
        self.idx = torch.zeros(batch_size, dtype=torch.int64, device=x.device)
        self.graph = torch.cuda.CUDAGraph()
        self._capture()

    def _capture(self) -> None:
        device = self.x.device
        params = [p for g in self.opt.param_groups for p in g["params"]]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {
            id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
            for p, s in self.opt.state.items()
        }
        rng = torch.cuda.get_rng_state(device)
        self.idx.copy_(torch.arange(self.batch_size, device=device) % len(self.x))
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                eager_step(self.model, self.opt, self.x[self.idx], self.y[self.idx])
        torch.cuda.current_stream(device).wait_stream(side)
        # Undo the warm-up: in place, since the graph will read these very tensors.
        with torch.no_grad():
            for p, saved in zip(params, saved_params, strict=True):
                p.copy_(saved)
            for p, state in self.opt.state.items():
                before = saved_state.get(id(p), {})
                for key, value in state.items():
                    if not torch.is_tensor(value):
                        continue
                    if key in before:
                        value.copy_(before[key])
                    else:
                        value.zero_()  # Adam's state as its first step creates it
        torch.cuda.set_rng_state(rng, device)
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss, self.scores = eager_step(
                self.model, self.opt, self.x[self.idx], self.y[self.idx]
            )

    def run(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(idx) != self.batch_size:
            return eager_step(self.model, self.opt, self.x[idx], self.y[idx])
        self.idx.copy_(idx)
        self.graph.replay()
        return self.loss, self.scores
