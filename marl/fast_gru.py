"""A GRU over whole sequences with a hand-written backward pass (BPTT), for small networks on CPU.

PyTorch's CPU ``nn.GRU`` backward goes through autograd one time step and one small op at a time,
which dominates the update of a 64-unit recurrent agent trained on batches of whole episodes. Here
the input projections of all time steps are one matmul (outside, under autograd), the recurrence
runs in a plain loop without building a graph, and the backward pass is one loop with a single
matmul per step plus one large matmul for the recurrent weight gradient.

The parameters are those of ``nn.GRU`` (same layout and equations), so state dicts stay standard:

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _GRURecurrence(torch.autograd.Function):
    """gi [R,T,3H] (input projections incl. b_ih), h0 [R,H], w_hh [3H,H], b_hh [3H], and
    active[t] = number of leading rows still inside their sequence at step t (non-increasing;
    rows must be sorted by length, longest first) -> hs [R,T,H], zero where a row is inactive.
    Skipping finished rows is what makes padded batches of short episodes cheap."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, active):
        R, T, H3 = gi.shape
        H = H3 // 3
        hs = gi.new_zeros(T, R, H)
        r_all, z_all, n_all, hn_all = (gi.new_zeros(T, R, H) for _ in range(4))
        gi_t = gi.transpose(0, 1)  # [T,R,3H] view
        w_hh_t = w_hh.t()
        h = h0
        for t in range(T):
            k = active[t]
            if k == 0:
                break
            h = h[:k]
            gh = torch.addmm(b_hh, h, w_hh_t)
            rz = torch.sigmoid(gi_t[t, :k, : 2 * H] + gh[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            hn = gh[:, 2 * H:]
            n = torch.tanh(torch.addcmul(gi_t[t, :k, 2 * H:], r, hn))
            h = torch.lerp(n, h, z)  # n + z * (h - n)
            hs[t, :k], r_all[t, :k], z_all[t, :k], n_all[t, :k], hn_all[t, :k] = h, r, z, n, hn
        ctx.active = active
        ctx.save_for_backward(h0, w_hh, hs, r_all, z_all, n_all, hn_all)
        return hs.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_hs):
        h0, w_hh, hs, r_all, z_all, n_all, hn_all = ctx.saved_tensors
        active = ctx.active
        T, R, H = hs.shape
        grad_hs = grad_hs.transpose(0, 1)
        h_prev_all = torch.cat([h0.unsqueeze(0), hs[:-1]], dim=0)
        d_gates = grad_hs.new_zeros(T, R, 3 * H)  # d(pre-activations): r, z, n (input part)
        d_gh = grad_hs.new_zeros(T, R, 3 * H)  # d(W_hh h + b_hh)
        dh_next = torch.zeros_like(h0)  # rows inactive at t+1 get no gradient from there
        for t in range(T - 1, -1, -1):
            k = active[t]
            if k == 0:
                continue
            r, z, n, hn, h_prev = r_all[t, :k], z_all[t, :k], n_all[t, :k], hn_all[t, :k], h_prev_all[t, :k]
            dh = grad_hs[t, :k] + dh_next[:k]
            da_n = dh * (1 - z) * (1 - n * n)
            da_r = da_n * hn * r * (1 - r)
            da_z = dh * (h_prev - n) * z * (1 - z)
            d_gates[t, :k, :H], d_gates[t, :k, H:2 * H], d_gates[t, :k, 2 * H:] = da_r, da_z, da_n
            d_gh[t, :k, :2 * H] = d_gates[t, :k, :2 * H]
            d_gh[t, :k, 2 * H:] = da_n * r
            dh_next[:k] = torch.addmm(dh * z, d_gh[t, :k], w_hh)
        flat_gh = d_gh.reshape(T * R, 3 * H)
        grad_w_hh = flat_gh.t() @ h_prev_all.reshape(T * R, H)
        grad_b_hh = flat_gh.sum(0)
        return d_gates.transpose(0, 1), dh_next, grad_w_hh, grad_b_hh, None


def gru_sequence(x: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU,
                 active: list[int] | None = None) -> torch.Tensor:
    """Run a single-layer, batch-first ``nn.GRU``'s parameters over x [R,T,I] from h0 [R,H];
    returns all hidden states [R,T,H]: the same function as ``gru(x, h0[None])[0]`` where rows are
    active, zeros elsewhere. ``active[t]`` (default: all rows) is the number of leading rows still
    inside their sequence at step t; rows must then be sorted by length, longest first."""
    R, T = x.shape[:2]
    active = [R] * T if active is None else [min(int(k), R) for k in active]
    if any(b > a for a, b in zip(active, active[1:])):
        raise ValueError("active row counts must be non-increasing (sort rows by length, longest first)")
    gi = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    return _GRURecurrence.apply(gi, h0, gru.weight_hh_l0, gru.bias_hh_l0, active)
