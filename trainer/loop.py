"""The optimisation loop every objective shares: seeded batches, checkpoints, resume, progress.

Determinism: the batch order of epoch e is a permutation drawn from a generator seeded
with (seed, e), so any step can be reached again without replaying the ones before it;
a checkpoint stores model, optimizer, loss scaler, RNG states and the step, so a run
resumed from it continues exactly where the interrupted one was.

One optimizer step takes one *global* batch, whatever the number of processes and
micro-batches: under `accelerate launch` / `torchrun` each process takes every
world-th example of it, splits its share into `gradient_accumulation` micro-batches,
and weights each micro-batch's mean loss by its share of the batch's loss units
(tokens or rows), so the gradient is the one mean over the whole batch that a single
process would take. Only the first process (rank 0) writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from factory.errors import StillhouseError
from trainer.devices import Precision, grad_scaler

CHECKPOINTS = "checkpoints"


@dataclass
class LoopResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step run in this process
    resumed_from: int | None = None
    is_main: bool = True  # the process that writes the model and provenance
    seconds: float = 0.0  # wall time of the steps (no loading, no saving)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


@dataclass
class Processes:
    """This process's place among the training processes: one, unless started by accelerate or torchrun."""

    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @classmethod
    def start(cls, device: torch.device) -> Processes:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import Accelerator

        # gloo on CPU, nccl on GPUs; FSDP / DeepSpeed settings come from `accelerate launch --config_file`
        accelerator = Accelerator(cpu=device.type == "cpu")
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.accelerator.device if self.accelerator else None

    def prepare(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """Move to the device; wrap for gradient synchronisation (DDP, or FSDP when so configured)."""
        return self.accelerator.prepare_model(model) if self.accelerator else model.to(device)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self.accelerator.no_sync(model) if self.accelerator else contextlib.nullcontext()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(value, "sum") if self.accelerator else value

    def wait(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n_items: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_items, generator=generator).tolist()


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def last_checkpoint(output_dir: Path) -> Path | None:
    directory = Path(output_dir) / CHECKPOINTS
    steps = sorted((int(p.name.split("-")[1]), p) for p in directory.glob("step-*") if (p / "state.pt").is_file())
    return steps[-1][1] if steps else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: str = "",
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write checkpoints/step-N/state.pt atomically, then drop older checkpoints."""
    directory = Path(output_dir) / CHECKPOINTS
    final = directory / f"step-{step}"
    staging = directory / f".tmp-step-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": _rng_state(),
    }
    torch.save(state, staging / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in directory.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _micro_batches(batch: Sequence[Any], rank: int, world: int, accumulation: int) -> Iterator[tuple[Any, bool]]:
    """This process's share of a global batch in up to `accumulation` pieces, each with whether it counts.

    A process whose share is empty still runs one (zero-weighted) piece: every process must
    take part in each gradient synchronisation."""
    share = list(batch[rank::world])
    if not share:
        yield list(batch[:1]), False
        return
    size = math.ceil(len(share) / accumulation)
    for i in range(0, len(share), size):
        yield share[i : i + size], True


def run_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches_for_epoch: Callable[[int], Sequence[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    epochs: float,
    lr: float,
    output_dir: Path,
    checkpoint_every: int = 0,
    resume: bool = True,
    description: str = "training",
    max_grad_norm: float = 1.0,
    fingerprint: str = "",
    count_fn: Callable[[Any], int] = len,
    gradient_accumulation: int = 1,
    precision: Precision = "fp32",
    device: torch.device | None = None,
    processes: Processes | None = None,
) -> LoopResult:
    """Train for ceil(epochs * batches per epoch) steps with linearly decaying lr.

    loss_fn(examples) is the mean loss over the loss units of `examples` (count_fn counts
    them: rows by default, tokens for causal LMs), computed on `model`, which is already on
    its device and, with several processes, wrapped by `processes.prepare`.
    """
    device = device or torch.device("cpu")
    processes = processes or Processes.start(device)
    if processes.world > 1 and processes.unwrap(model) is model:
        raise StillhouseError(f"{description}: this objective does not support several training processes yet")
    scaler = grad_scaler(device, precision)
    steps_per_epoch = len(batches_for_epoch(0))
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    step, resumed_from = 0, None
    checkpoint = last_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        state = torch.load(checkpoint / "state.pt", weights_only=False, map_location="cpu")  # our own file (RNG)
        if state.get("fingerprint") != fingerprint:
            raise StillhouseError(
                f"{checkpoint}: written by a different training config; use another output_dir or resume: false"
            )
        processes.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step = resumed_from = state["step"]

    result = LoopResult(steps=step, resumed_from=resumed_from, is_main=processes.is_main)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    ]
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    model.train()
    started = time.perf_counter()
    with Progress(*columns, disable=not processes.is_main) as progress:
        task = progress.add_task(description, total=total_steps, completed=step, loss="-")
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            epoch_batches = batches_for_epoch(epoch)
            for batch in epoch_batches[index:]:
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr * (1.0 - step / total_steps)
                optimizer.zero_grad(set_to_none=True)
                units = count_fn(batch)  # the whole global batch's loss units, the same in every process
                pieces = list(_micro_batches(batch, processes.rank, processes.world, gradient_accumulation))
                step_loss = torch.zeros((), device=device)
                for i, (piece, counts) in enumerate(pieces):
                    sync = contextlib.nullcontext() if i == len(pieces) - 1 else processes.no_sync(model)
                    with sync:
                        weight = count_fn(piece) / units if counts else 0.0
                        loss = loss_fn(piece) * weight
                        # DDP averages gradients over processes; undo it so they add up to the batch mean
                        scaler.scale(loss * processes.world).backward()
                    step_loss += loss.detach()
                scaler.unscale_(optimizer)
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                result.losses.append(float(processes.sum(step_loss)))
                progress.update(task, advance=1, loss=f"{result.losses[-1]:.4f}")
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    if processes.is_main:
                        save_checkpoint(output_dir, step, processes.unwrap(model), optimizer, fingerprint, scaler)
                    processes.wait()
    result.steps = step
    result.seconds = time.perf_counter() - started
    model.eval()
    return result
