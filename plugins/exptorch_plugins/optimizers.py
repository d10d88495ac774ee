"""Optimizer plugins ``sgd``, ``adamw`` and ``adam``, for ``--optimizer``.

Each builds its optimizer over the model's trainable parameters. With
``--OPT-no-decay-norm-bias`` (every optimizer has one) biases and
normalisation weights, the one-dimensional parameters, get no weight decay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exptorch import ExptError, Option, hookimpl

if TYPE_CHECKING:
    import torch


def param_groups(
    model: torch.nn.Module, weight_decay: float, no_decay_norm_bias: bool = False
) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, optionally without decay on 1-d ones."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def sgd(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    sgd_nesterov: bool = False,
    sgd_no_decay_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    import torch

    if sgd_nesterov and momentum <= 0:
        raise ExptError("--sgd-nesterov needs --momentum above 0 (0.9, say).")
    groups = param_groups(model, weight_decay, sgd_no_decay_norm_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=sgd_nesterov)


def adamw(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    adamw_beta1: float = 0.9,
    adamw_beta2: float = 0.999,
    adamw_no_decay_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    import torch

    groups = param_groups(model, weight_decay, adamw_no_decay_norm_bias)
    return torch.optim.AdamW(groups, lr=lr, betas=(adamw_beta1, adamw_beta2))


def adam(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_no_decay_norm_bias: bool = False,
) -> torch.optim.Optimizer:
    import torch

    groups = param_groups(model, weight_decay, adam_no_decay_norm_bias)
    return torch.optim.Adam(groups, lr=lr, betas=(adam_beta1, adam_beta2))


def _no_decay(name: str) -> Option:
    return Option(
        f"{name}_no_decay_norm_bias",
        default=False,
        is_flag=True,
        help="No weight decay on biases and normalisation weights.",
    )


def _betas(name: str) -> tuple[Option, Option]:
    return (
        Option(
            f"{name}_beta1",
            0.9,
            "Decay of the gradient average.",
            float,
            minimum=0,
            maximum=0.999999,
        ),
        Option(
            f"{name}_beta2",
            0.999,
            "Decay of the squared-gradient average.",
            float,
            minimum=0,
            maximum=0.999999,
        ),
    )


@hookimpl
def register_optimizers(register: Any) -> None:
    register(
        "sgd",
        sgd,
        description="stochastic gradient descent, with --momentum and optional Nesterov",
        options=(
            Option("sgd_nesterov", False, "Nesterov momentum (needs --momentum).", is_flag=True),
            _no_decay("sgd"),
        ),
    )
    register(
        "adamw",
        adamw,
        description="Adam with decoupled weight decay",
        options=(*_betas("adamw"), _no_decay("adamw")),
    )
    register(
        "adam",
        adam,
        description="Adam (weight decay added to the gradient)",
        options=(*_betas("adam"), _no_decay("adam")),
    )
