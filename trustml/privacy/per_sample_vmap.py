"""Per-sample gradients of a whole model with ``torch.func``: ``vmap(grad(loss of one sample))``.

The model runs functionally (``functional_call``) on one sample at a time inside ``vmap``, which batches
the computation again, so the cost is close to one batched forward and backward and no Python loop runs
over the samples. It needs a forward without data-dependent Python control flow; models that have some
(e.g. Hugging Face encoders that inspect the attention mask) use :mod:`trustml.privacy.per_sample_layerwise`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trustml.errors import ConfigError
from trustml.privacy.batching import Batch, add_sample_dim, batch_size, vmap_in_dims
from trustml.privacy.per_sample import MaterializedGradients, PerSampleResult, SampleLossFn


def vmap_per_sample_gradients(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
) -> PerSampleResult:
    """Gradient of ``sample_losses(model(x_i), batch_i)`` w.r.t. ``params`` for every sample ``i``."""
    in_dims = vmap_in_dims(batch, batch_size(batch))

    def loss_of_one(weights: dict[str, Tensor], sample: Batch) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        one = add_sample_dim(sample, in_dims)
        logits = functional_call(model, weights, (one["x"],), strict=False)
        loss = sample_losses(logits, one).reshape(())
        return loss, (logits.squeeze(0).detach(), loss.detach())

    compute = vmap(grad(loss_of_one, has_aux=True), in_dims=(None, in_dims), randomness="different")
    try:
        grads, (logits, losses) = compute({name: p.detach() for name, p in params.items()}, batch)
    except RuntimeError as exc:
        if "vmap" not in str(exc):
            raise
        raise ConfigError(
            f"optimizer.per_sample_gradients=vmap cannot batch this model's forward ({type(model).__name__}): "
            f"{str(exc).splitlines()[0]} Set optimizer.per_sample_gradients=layerwise, which runs the model "
            f"normally and computes per-sample gradients layer by layer."
        ) from exc
    return PerSampleResult(MaterializedGradients(grads), logits, losses)
