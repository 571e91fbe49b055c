"""The optimisation loop every objective shares: seeded batches, checkpoints, resume, progress.

Determinism on CPU: the batch order of epoch e is a permutation drawn from a generator
seeded with (seed, e), so any step can be reached again without replaying the ones
before it; a checkpoint stores model, optimizer, RNG states and the step, so a run
resumed from it continues exactly where the interrupted one was.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from factory.errors import StillhouseError

CHECKPOINTS = "checkpoints"


@dataclass
class LoopResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step run in this process
    resumed_from: int | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


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
    output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str = ""
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
        "rng": _rng_state(),
    }
    torch.save(state, staging / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in directory.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
) -> LoopResult:
    """Train for ceil(epochs * batches per epoch) steps with linearly decaying lr."""
    steps_per_epoch = len(batches_for_epoch(0))
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    step, resumed_from = 0, None
    checkpoint = last_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        state = torch.load(checkpoint / "state.pt", weights_only=False)  # our own file; RNG states need pickle
        if state.get("fingerprint") != fingerprint:
            raise StillhouseError(
                f"{checkpoint}: written by a different training config; use another output_dir or resume: false"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step = resumed_from = state["step"]

    result = LoopResult(steps=step, resumed_from=resumed_from)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    ]
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    model.train()
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=total_steps, completed=step, loss="-")
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            epoch_batches = batches_for_epoch(epoch)
            for batch in epoch_batches[index:]:
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr * (1.0 - step / total_steps)
                loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                step += 1
                result.losses.append(float(loss.detach()))
                progress.update(task, advance=1, loss=f"{result.losses[-1]:.4f}")
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    save_checkpoint(output_dir, step, model, optimizer, fingerprint)
    result.steps = step
    model.eval()
    return result
