"""The MLP's input and output of each block, as a transcoder reads and writes them (docs/design.md §4b).

A transcoder at ``tc.L`` reads the MLP's input, which is ln2's output (``normalized * w + b``: for
Gemma-3 the ``pre_feedforward_layernorm``'s output, what Gemma Scope 2's transcoder configs call
``blocks.L.hook_mlp_in`` with ``hf_hook_name`` ``model.layers.L.pre_feedforward_layernorm.output``), and
writes the MLP's output as the block adds it to the stream, ``blocks.L.hook_mlp_out`` (for Gemma-3 after
``post_feedforward_layernorm``). TransformerLens has no hook point on ln2's output (``ln2.hook_normalized``
comes before the weight), so the input is taken by a forward pre-hook on ``blocks[L].mlp``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


@contextmanager
def capturing_mlp_inputs(model, layers: Iterable[int], store: dict) -> Iterator[dict]:
    """While the context is open, ``store[L]`` is the MLP input of block ``L`` of the latest forward
    (the tensor itself, in the autograd graph when the forward builds one)."""
    handles = []

    def make(layer: int):
        def pre_hook(module, args):  # noqa: ARG001 (torch signature)
            store[layer] = args[0]

        return pre_hook

    try:
        for layer in layers:
            handles.append(model.blocks[layer].mlp.register_forward_pre_hook(make(layer)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def recording_mlp_io(model, layers: Iterable[int]) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``{L: (mlp_in, mlp_out)}`` (detached, ``[B, T, d]``) during the forwards run inside the context;
    a forward may stop after the last layer it needs (``stop_at_layer``)."""
    layers = list(layers)
    inputs: dict[int, torch.Tensor] = {}
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make(layer: int):
        def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens signature)
            out[layer] = (inputs[layer].detach(), act.detach())
            return act

        return hook

    with capturing_mlp_inputs(model, layers, inputs), \
            model.hooks(fwd_hooks=[(f"blocks.{L}.hook_mlp_out", make(L)) for L in layers]):
        yield out
