"""exptorch plugin: training extras, written against exptorch's public API only.

========================  ==========================================================
``--optimizer lion``      Lion (Chen et al. 2023): the sign of an interpolated momentum
``--transform blend``     mixup-style: each image blended with a partner, labels alike
``--clip-norm X``         clip the gradients' global norm before every optimizer step
``--ema-decay D``         evaluate (and pick the best checkpoint) with an EMA of weights
``--grad-log-every N``    log the gradients' global norm every N steps
``--metric balanced-accuracy``  the mean over classes of the per-class accuracy
========================  ==========================================================

Module-level imports stay cheap (``expt --help`` imports every plugin): torch is
imported inside the factories.
"""

from __future__ import annotations

from typing import Any

from exptorch import DatasetInfo, ExptError, Option, RunContext, hookimpl

__all__ = [
    "register_callbacks",
    "register_metrics",
    "register_optimizers",
    "register_transforms",
]


def make_lion(
    model: Any,
    *,
    lr: float,
    weight_decay: float,
    lion_beta1: float = 0.9,
    lion_beta2: float = 0.99,
) -> Any:
    from exptorch_training_extras.lion import Lion

    params = [p for p in model.parameters() if p.requires_grad]
    return Lion(params, lr=lr, betas=(lion_beta1, lion_beta2), weight_decay=weight_decay)


@hookimpl
def register_optimizers(register: Any) -> None:
    register(
        "lion",
        make_lion,
        description="Lion: sign of an interpolated momentum (use ~10x smaller --lr than AdamW)",
        options=[
            Option("lion_beta1", 0.9, "Interpolation of the update.", float, minimum=0, maximum=1),
            Option("lion_beta2", 0.99, "Decay of the momentum.", float, minimum=0, maximum=1),
        ],
    )


def make_blend_transform(info: DatasetInfo, *, blend_alpha: float = 0.4, **_: Any) -> Any:
    from exptorch_training_extras.blend import make_blend

    return make_blend(info.num_classes, blend_alpha)


@hookimpl
def register_transforms(register: Any) -> None:
    register(
        "blend",
        make_blend_transform,
        description="mixup-style: images and labels blended with a shuffled partner",
        options=[
            Option("blend_alpha", 0.4, "Beta(alpha, alpha) of the weight.", float, minimum=1e-3)
        ],
    )


def clip(run: RunContext, clip_norm: float | None = None) -> Any:
    if clip_norm is None:
        return None
    from exptorch_training_extras.callbacks import ClipGradients

    return ClipGradients(clip_norm)


def ema(run: RunContext, ema_decay: float | None = None) -> Any:
    if ema_decay is None:
        return None
    if run.config.nproc_per_node > 1:
        raise ExptError("--ema-decay is not supported with --nproc-per-node yet.")
    from exptorch_training_extras.callbacks import EMA

    return EMA(run.model, ema_decay)


def grad_log(run: RunContext, grad_log_every: int | None = None) -> Any:
    if grad_log_every is None:
        return None
    from exptorch_training_extras.callbacks import GradNormLog

    return GradNormLog(grad_log_every)


@hookimpl
def register_callbacks(register: Any) -> None:
    register(
        "clip",
        clip,
        description="clip the gradients' global norm before each optimizer step",
        options=[Option("clip_norm", None, "Largest global gradient norm.", float, minimum=1e-12)],
    )
    register(
        "ema",
        ema,
        description="exponential moving average of the weights, used for evaluation",
        options=[Option("ema_decay", None, "Decay per step (0.999).", float, minimum=0, maximum=1)],
    )
    register(
        "grad-log",
        grad_log,
        description="log the gradients' global norm as grad_norm every N steps",
        options=[Option("grad_log_every", None, "Steps between records.", int, minimum=1)],
    )


def balanced_accuracy(info: DatasetInfo, **_: Any) -> Any:
    from exptorch_training_extras.metrics import BalancedAccuracy

    return BalancedAccuracy(info.num_classes)


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "balanced-accuracy",
        balanced_accuracy,
        description="accuracy per class, averaged over the classes",
    )
