"""LRP rules for Relevance Patching (docs/design.md §6), as TransformerLens hooks.

Each rule changes only the backward pass; the forward values are bit-for-bit those of the model.
A rule rewrites an output ``y = op(x)`` as ``y.detach() + (s - s.detach())`` for a *surrogate* ``s``
whose gradient is the LRP propagation coefficient:

- LN-rule (LayerNorm, RMSNorm, every ``*.hook_scale``): the normaliser is a constant,
  ``x / scale.detach()``.
- AH-rule (attention): the pattern is a constant, ``pattern.detach()``.
- Identity-rule (elementwise activation ``a = act(z)``): ``s = z * (act(z) / stab(z)).detach()``,
  ``stab(z) = z + ((z == 0) + sign(z)) * 1e-6``.
- Half-rule (gate ``u * v`` of a gated MLP, with the identity-rule on ``u = act(z)``):
  ``s = 0.5 * (u * v.detach()) + 0.5 * (u.detach() * v)``.

Linear maps, residual additions, embeddings and the unembedding keep their gradient (LRP-0).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from featcirc.attribution.rule_set import LRPRules

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

EPS_STAB = 1e-6


def stabilize(z: torch.Tensor) -> torch.Tensor:
    """``z + ((z == 0) + sign(z)) * 1e-6``: never zero, same sign as ``z``."""
    return z + ((z == 0).to(z.dtype) + torch.sign(z)) * EPS_STAB


def with_surrogate_grad(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``value``. Backward: the gradient of ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


def identity_rule(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Surrogate of ``a = act(z)``: ``z * (a / stab(z)).detach()``."""
    return z * (a / stabilize(z)).detach()


def half_rule(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Surrogate of ``u * v``: each factor receives half of the relevance."""
    return 0.5 * (u * v.detach()) + 0.5 * (u.detach() * v)


def _detach_hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
    return act.detach()


def rule_hooks(model: "HookedTransformer", rules: LRPRules) -> list[tuple[str, object]]:
    """The ``(hook_name, fn)`` pairs that implement ``rules`` on ``model``."""
    fwd: list[tuple[str, object]] = []
    names = list(model.hook_dict)
    if rules.ln:
        fwd += [(n, _detach_hook) for n in names if n.endswith("hook_scale")]
    if rules.attention:
        fwd += [(n, _detach_hook) for n in names if n.endswith("attn.hook_pattern")]
    if rules.activation or rules.gate:
        for layer, block in enumerate(model.blocks):
            mlp = getattr(block, "mlp", None)
            if mlp is None or not hasattr(mlp, "hook_pre"):
                continue
            fwd += _mlp_hooks(f"blocks.{layer}.mlp", mlp, rules)
    return fwd


def _mlp_hooks(prefix: str, mlp: torch.nn.Module, rules: LRPRules) -> list[tuple[str, object]]:
    gated = hasattr(mlp, "hook_pre_linear") and getattr(mlp, "hook_mid", None) is None
    saved: dict[str, torch.Tensor] = {}

    def save(key: str):
        def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            saved[key] = act
            return act

        return hook

    if not gated:
        if not rules.activation:
            return []
        out_hook = "hook_mid" if getattr(mlp, "hook_mid", None) is not None else "hook_post"

        def act_out(a: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            return with_surrogate_grad(a, identity_rule(saved.pop("z"), a))

        return [(f"{prefix}.hook_pre", save("z")), (f"{prefix}.{out_hook}", act_out)]

    def gate_out(post: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        z, v = saved.pop("z"), saved.pop("v")
        a = mlp.act_fn(z)
        u = with_surrogate_grad(a, identity_rule(z, a)) if rules.activation else a
        surrogate = half_rule(u, v) if rules.gate else u * v
        return with_surrogate_grad(post, surrogate)

    return [
        (f"{prefix}.hook_pre", save("z")),
        (f"{prefix}.hook_pre_linear", save("v")),
        (f"{prefix}.hook_post", gate_out),
    ]


@contextmanager
def lrp_rules(model: "HookedTransformer", rules: LRPRules = LRPRules()) -> Iterator[None]:
    """Install the LRP rules on ``model`` for the duration of the context (removed even on error)."""
    fwd = rule_hooks(model, rules) if rules.any else []
    if not fwd:
        yield
        return
    with model.hooks(fwd_hooks=fwd):
        yield
