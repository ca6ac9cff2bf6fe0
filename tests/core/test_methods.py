"""The base classification method's batch loss: the mean of its per-sample losses, fused where it can be."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.methods.base import Batch, ClassificationMethod
from trustml.methods.erm import ERM, ERMConfig


class DoubledLoss(ClassificationMethod):
    """A method with its own per-sample loss (twice the cross-entropy)."""

    def sample_losses(self, logits: Tensor, batch: Batch) -> Tensor:
        return 2 * F.cross_entropy(logits, batch["y"], reduction="none")


def gradients(method: ClassificationMethod, batch: Batch) -> tuple[Tensor, list[Tensor]]:
    method.model.zero_grad()
    loss = method.batch_loss(method.model(batch["x"]), batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in method.model.parameters()]


def test_batch_loss_is_the_mean_of_the_sample_losses_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    batch = {"x": torch.randn(7, 5), "y": torch.randint(0, 3, (7,))}
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    for method_cls in (ERM, DoubledLoss):
        model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        method = method_cls(ERMConfig(), model=model, optimizer=sgd, num_classes=3)
        loss, grads = gradients(method, batch)
        method.model.zero_grad()
        reference = method.sample_losses(method.model(batch["x"]), batch).mean()
        reference.backward()
        torch.testing.assert_close(loss, reference.detach())
        for grad, param in zip(grads, method.model.parameters(), strict=True):
            torch.testing.assert_close(grad, param.grad)
    erm = ERM(ERMConfig(), model=nn.Linear(5, 3), optimizer=sgd, num_classes=3)
    assert erm.batch_loss(erm.model(batch["x"]), batch).grad_fn.name() != "MeanBackward0"  # one fused op
