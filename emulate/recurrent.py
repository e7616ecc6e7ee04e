"""Quantized recurrent layers: nn.LSTM, nn.GRU and nn.RNN with every gate
product rounded as a QuantSpec says.

torch runs a recurrent layer as one fused kernel (cuDNN, MKL, or ATen's
own loop), so the products inside it escape both module swapping and
``emulating``. :class:`QuantLSTM`, :class:`QuantGRU` and :class:`QuantRNN`
run the recurrence in Python, step by step, with torch's documented
equations (gate order i, f, g, o for LSTM and r, z, n for GRU, as in the
weights' rows), and take each of its two products through
:func:`~lowbit.emulate.linear.quantized_linear`:

- the input product ``x_t @ W_ih.T + b_ih``: ``input`` is the layer's input
  x_t (for layers after the first, the previous layer's output, both
  directions concatenated), ``weight`` is ``weight_ih``;
- the hidden product ``h_{t-1} @ W_hh.T + b_hh``: ``input`` is the hidden
  state h_{t-1} (h_0 included), ``weight`` is ``weight_hh``;
- ``output`` rounds each product's result, biases included, along its last
  axis: the stacked gates (blocks may span two gates), before the two are
  added. For GRU, ``W_hn h + b_hn`` is rounded before r multiplies it.

The rest runs in full precision, in the order of the equations: the sum of
the two products, sigmoid and tanh (or ReLU), the cell state, the new
hidden state, and dropout between layers (training only, as torch does).
In the backward pass each product is differentiated as
``quantized_linear`` does: ``grad_output`` rounds the gradient of its
result, ``grad_input`` the gradient it passes to x_t or h_{t-1} (so the
gradient flowing back through time is rounded at every step), and
``grad_weight`` the weight gradient it gives.

The input products of all time steps of a layer and direction are one
``quantized_linear`` call on the sequence as (batch, steps, features),
and each step's hidden product one call on h_{t-1} as (batch, 1,
features). The forward pass is identical to one input product per step
(x, weight and output blocks run along the feature axis, row by row); only
float32's summation order could differ. The backward pass is not:

- ``weight_ih``'s gradient is one product that reduces over every token of
  the sequence, rounded to ``grad_weight`` once; its ``grad_output`` and
  ``input`` operands are blocked along the tokens as for a Linear layer
  given (batch, steps, features), whatever ``batch_first``: with
  ``token_blocks="batch"`` the tokens are flattened sample by sample (a
  block may span two samples), with ``"sample"`` blocks run along each
  sample's steps.
- ``weight_hh``'s gradient is a sum of one product per step, each reducing
  over that step's batch rows and rounded to ``grad_weight`` before
  autograd adds them up in full precision. With ``token_blocks="batch"``
  a block spans the samples of the step; with ``"sample"`` each sample's
  one token is a block of its own (so, as the option promises, the
  gradient does not depend on how the batch is split).

Running step by step (and rounding ``weight_hh`` again at every step)
makes these layers much slower than torch's fused kernels; they are meant
for studying formats, not for speed. Not
supported: PackedSequence input, LSTM ``proj_size > 0``, and observers
(``QuantSpec(observers=...)``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .linear import quantized_linear
from .modules import QuantModule
from .rounding import quantized_module
from .spec import QuantSpec

State = tuple[torch.Tensor, ...]  # (h,) or, for LSTM, (h, c); each (layers * directions, batch, hidden)


class QuantRecurrent(QuantModule):
    """What QuantLSTM, QuantGRU and QuantRNN share: argument handling, the
    layers and directions, and dropout; the subclasses give the cell."""

    state_names: tuple[str, ...] = ("h_0",)

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        if isinstance(spec, QuantSpec) and spec.observers:
            raise ValueError(f"{type(self).__name__} takes no observers (QuantSpec(observers=...)): its input role "
                             f"covers both x_t and h_t-1; use formats that scale themselves (block formats)")
        super().__init__(module, spec)

    def forward(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        """What the wrapped module returns, from quantized gate products."""
        x, batched = self._time_major(input)
        state = self._initial_state(hx, x, batched)
        with quantized_module():
            output, final = self._layers(x, state)
        if not batched:
            return output.squeeze(1), self._returned_state(tuple(s.squeeze(1) for s in final))
        return (output.transpose(0, 1) if self.original.batch_first else output), self._returned_state(final)

    def _time_major(self, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The input as (time, batch, features), and whether it had a batch axis."""
        name = type(self.original).__name__
        if isinstance(input, PackedSequence):
            raise ValueError(f"Quant{name} does not take a PackedSequence input: pad the sequences "
                             f"(torch.nn.utils.rnn.pad_packed_sequence) and give a tensor")
        if input.dim() not in (2, 3):
            raise ValueError(f"Quant{name}: input must be 2-D (unbatched) or 3-D, got {input.dim()}-D")
        if input.dim() == 2:
            return input.unsqueeze(1), False
        return (input.transpose(0, 1) if self.original.batch_first else input), True

    def _initial_state(self, hx: Any, x: torch.Tensor, batched: bool) -> State:
        """hx as a State (zeros where it is None), checked as torch checks it."""
        rnn = self.original
        shape = (rnn.num_layers * (2 if rnn.bidirectional else 1), x.shape[1], rnn.hidden_size)
        if hx is None:
            return tuple(x.new_zeros(shape) for _ in self.state_names)
        state = self._given_state(hx)
        wanted = 3 if batched else 2
        for name, tensor in zip(self.state_names, state):
            if tensor.dim() != wanted:
                raise ValueError(f"hx: {name} must be {wanted}-D for {'batched 3-D' if batched else 'unbatched 2-D'} "
                                 f"input, got {tensor.dim()}-D")
        if not batched:
            state = tuple(s.unsqueeze(1) for s in state)
        user_input = x.transpose(0, 1) if rnn.batch_first else x
        rnn.check_forward_args(user_input, self._returned_state(state), None)  # torch's size checks
        return state

    def _layers(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The output of the last layer (time-major) and the final states."""
        rnn = self.original
        directions = 2 if rnn.bidirectional else 1
        finals = []
        for layer in range(rnn.num_layers):
            if layer > 0 and self.training and rnn.dropout > 0:
                x = F.dropout(x, rnn.dropout, training=True)
            outputs = []
            for reverse in range(directions):
                index = layer * directions + reverse
                output, final = self._direction(x, tuple(s[index] for s in state), layer, bool(reverse))
                outputs.append(output)
                finals.append(final)
            x = torch.cat(outputs, dim=-1)
        return x, tuple(torch.stack(parts) for parts in zip(*finals))

    def _direction(self, x: torch.Tensor, state: State, layer: int, reverse: bool) -> tuple[torch.Tensor, State]:
        """One layer in one direction over the whole sequence: its outputs h_t
        (time-major, in time order) and its final state."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        bias = self.original.bias
        b_ih, b_hh = (getattr(self, f"bias_{kind}{suffix}") if bias else None for kind in ("ih", "hh"))
        weight_hh = getattr(self, f"weight_hh{suffix}")
        # every step at once, as (batch, steps, features): the tokens of the weight gradient, sample by sample
        projected = quantized_linear(x.transpose(0, 1), getattr(self, f"weight_ih{suffix}"), b_ih, self.spec)
        outputs = []
        for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
            h_product = quantized_linear(state[0].unsqueeze(1), weight_hh, b_hh, self.spec).squeeze(1)
            state = self.cell(projected[:, t], h_product, state)
            outputs.append(state[0])
        return torch.stack(outputs[::-1] if reverse else outputs), state

    def cell(self, x_product: torch.Tensor, h_product: torch.Tensor, state: State) -> State:
        """The next state from the step's two (rounded) products."""
        raise NotImplementedError

    def _given_state(self, hx: Any) -> State:
        """The user's hx as a State."""
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx must be None or a tensor h_0, got {type(hx).__name__}")
        return (hx,)

    def _returned_state(self, state: State) -> Any:
        """A State in the form the wrapped module returns."""
        return state[0]


class QuantLSTM(QuantRecurrent):
    """nn.LSTM with its gate products quantized (see the module docstring):
    i, f, g, o = gates of Q(x_t, W_ih) + Q(h_t-1, W_hh); c_t = f * c_t-1 + i * g;
    h_t = o * tanh(c_t). Returns (output, (h_n, c_n)), as nn.LSTM does."""

    wraps = (torch.nn.LSTM,)
    state_names = ("h_0", "c_0")

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        if getattr(module, "proj_size", 0) > 0:
            raise ValueError(f"QuantLSTM does not support proj_size > 0 (got proj_size={module.proj_size}); "
                             f"use proj_size=0")
        super().__init__(module, spec)

    def cell(self, x_product: torch.Tensor, h_product: torch.Tensor, state: State) -> State:
        i, f, g, o = (x_product + h_product).chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _given_state(self, hx: Any) -> State:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, torch.Tensor) for t in hx)):
            raise TypeError("hx must be None or a tuple (h_0, c_0) of two tensors")
        return tuple(hx)

    def _returned_state(self, state: State) -> Any:
        return state[0], state[1]


class QuantGRU(QuantRecurrent):
    """nn.GRU with its gate products quantized (see the module docstring):
    r, z = sigmoid of the r, z gates of Q(x_t, W_ih) + Q(h_t-1, W_hh);
    n = tanh(x_n + r * h_n) with x_n, h_n the n gates of the two products;
    h_t = (1 - z) * n + z * h_t-1. Returns (output, h_n), as nn.GRU does."""

    wraps = (torch.nn.GRU,)

    def cell(self, x_product: torch.Tensor, h_product: torch.Tensor, state: State) -> State:
        x_r, x_z, x_n = x_product.chunk(3, dim=-1)
        h_r, h_z, h_n = h_product.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return ((1 - z) * n + z * state[0],)


class QuantRNN(QuantRecurrent):
    """nn.RNN (tanh or relu) with its products quantized (see the module
    docstring): h_t = act(Q(x_t, W_ih) + Q(h_t-1, W_hh)). Returns
    (output, h_n), as nn.RNN does."""

    wraps = (torch.nn.RNN,)

    def cell(self, x_product: torch.Tensor, h_product: torch.Tensor, state: State) -> State:
        activation = torch.tanh if self.original.nonlinearity == "tanh" else torch.relu
        return (activation(x_product + h_product),)
