"""One PyTorch GRU or LSTM layer over time, for the tests that compare the recurrent cells with
PyTorch's equations and the unrolled loop with the scanned one (the classifiers run their layers
together with `recurrent.stacked_rnn`)."""

from __future__ import annotations

from limubert_jax.models.recurrent import RecurrentLayer, stacked_rnn


def gru_layer(x, kernel_ih, kernel_hh, bias_ih, bias_hh, *, unroll: bool = False):
    """One PyTorch GRU layer over time from h0 = 0.

    x: [B, T, I]; kernel_ih: [I, 3G]; kernel_hh: [G, 3G]; biases: [3G], gates packed (r, z, n).
    Returns all hidden states [B, T, G]; `unroll`: see `recurrent.over_time`.
    """
    return stacked_rnn(x, [RecurrentLayer(kernel_ih, kernel_hh, bias_ih, bias_hh)], "gru", unroll=unroll)


def lstm_layer(x, kernel_ih, kernel_hh, bias_ih, bias_hh, *, unroll: bool = False):
    """One PyTorch LSTM layer over time from h0 = c0 = 0.

    x: [B, T, I]; kernel_ih: [I, 4G]; kernel_hh: [G, 4G]; biases: [4G], gates packed in
    PyTorch's order (i, f, g, o):
    i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(...), g = tanh(...), o = σ(...),
    c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c').
    Returns all hidden states [B, T, G]; `unroll`: see `recurrent.over_time`.
    """
    return stacked_rnn(x, [RecurrentLayer(kernel_ih, kernel_hh, bias_ih, bias_hh)], "lstm", unroll=unroll)
