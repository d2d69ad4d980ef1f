"""Fine-tuning used to prepare the demos: a plain AdamW loop on a task's mean loss.

The loss is the same per-example loss the explanations differentiate (`Task`), so the
model explained is trained on exactly the objective its gradients describe.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from exemplar.progress import Progress, SilentProgress
from exemplar.tasks import Example, Task


def finetune(
    model: torch.nn.Module,
    task: Task,
    examples: Sequence[Example],
    *,
    epochs: int = 1,
    lr: float = 5e-5,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[float]:
    """Train the parameters of `model` that require grad; returns the mean loss per epoch.

    `on_epoch_end(epoch)` (1-based) runs after each epoch, e.g. to save a checkpoint.
    """
    progress = progress or SilentProgress()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [task.encode(e) for e in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    epoch_losses = []
    for epoch in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        progress.start(f"fine-tune epoch {epoch + 1}/{epochs}", len(order))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = task.collate([encoded[i] for i in idx])
            loss = task.per_example_loss(model, batch).losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            progress.advance(len(idx))
        progress.finish()
        epoch_losses.append(total / max(1, len(order)))
        if on_epoch_end is not None:
            model.eval()
            on_epoch_end(epoch + 1)
            model.train()
    model.eval()
    return epoch_losses
