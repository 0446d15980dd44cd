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
    """gi [T,R,3H] (input projections incl. b_ih), h0 [R,H], w_hh [3H,H], b_hh [3H], and
    active[t] = number of leading rows still inside their sequence at step t (non-increasing;
    rows must be sorted by length, longest first) -> hs [T,R,H], zero where a row is inactive.
    Skipping finished rows is what makes padded batches of short episodes cheap."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, active):
        T, R, H3 = gi.shape
        H = H3 // 3
        # Every intermediate is written in place into [T, R, ...] storage (out=), so the loop
        # allocates and copies nothing; only the inactive tails are zeroed.
        hs = gi.new_empty(T, R, H)
        gh_all = gi.new_empty(T, R, H3)  # W_hh h + b_hh
        rz_all = gi.new_empty(T, R, 2 * H)
        n_all = gi.new_empty(T, R, H)
        gi_t = gi
        w_hh_t = w_hh.t()
        h = h0
        for t in range(T):
            k = active[t]
            if k < R:
                hs[t, k:] = 0.0
            if k == 0:
                continue
            gh = torch.addmm(b_hh, h[:k], w_hh_t, out=gh_all[t, :k])
            rz = torch.sigmoid(torch.add(gi_t[t, :k, : 2 * H], gh[:, : 2 * H], out=rz_all[t, :k]), out=rz_all[t, :k])
            n = torch.tanh(torch.addcmul(gi_t[t, :k, 2 * H:], rz[:, :H], gh[:, 2 * H:], out=n_all[t, :k]),
                           out=n_all[t, :k])
            h = torch.lerp(n, h[:k], rz[:, H:], out=hs[t, :k])  # n + z * (h - n)
        ctx.active = active
        ctx.save_for_backward(h0, w_hh, hs, gh_all, rz_all, n_all)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        h0, w_hh, hs, gh_all, rz_all, n_all = ctx.saved_tensors
        active = ctx.active
        T, R, H = hs.shape
        h_prev_all = torch.cat([h0.unsqueeze(0), hs[:-1]], dim=0)
        d_gates = grad_hs.new_empty(T, R, 3 * H)  # d(pre-activations): r, z, n (input part)
        d_gh = grad_hs.new_empty(T, R, 3 * H)  # d(W_hh h + b_hh)
        dh_next = torch.zeros_like(h0)  # rows inactive at t+1 get no gradient from there
        for t in range(T - 1, -1, -1):
            k = active[t]
            if k < R:
                d_gates[t, k:] = 0.0
                d_gh[t, k:] = 0.0
            if k == 0:
                continue
            r, z = rz_all[t, :k, :H], rz_all[t, :k, H:]
            n, hn, h_prev = n_all[t, :k], gh_all[t, :k, 2 * H:], h_prev_all[t, :k]
            dh = grad_hs[t, :k] + dh_next[:k]
            da_n = torch.mul(dh * (1 - z), 1 - n * n, out=d_gates[t, :k, 2 * H:])
            torch.mul(da_n * hn, r * (1 - r), out=d_gates[t, :k, :H])
            torch.mul(dh * (h_prev - n), z * (1 - z), out=d_gates[t, :k, H:2 * H])
            d_gh[t, :k, :2 * H] = d_gates[t, :k, :2 * H]
            torch.mul(da_n, r, out=d_gh[t, :k, 2 * H:])
            dh_next[:k] = torch.addmm(dh * z, d_gh[t, :k], w_hh)
        flat_gh = d_gh.reshape(T * R, 3 * H)
        grad_w_hh = flat_gh.t() @ h_prev_all.reshape(T * R, H)
        grad_b_hh = flat_gh.sum(0)
        return d_gates, dh_next, grad_w_hh, grad_b_hh, None


def gru_sequence(x: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU,
                 active: list[int] | None = None) -> torch.Tensor:
    """Run a single-layer, time-major ``nn.GRU``'s parameters over x [T,R,I] from h0 [R,H];
    returns all hidden states [T,R,H]: the same function as ``gru(x, h0[None])[0]`` where rows are
    active, zeros elsewhere. ``active[t]`` (default: all rows) is the number of leading rows still
    inside their sequence at step t; rows must then be sorted by length, longest first."""
    return gru_recurrence(F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0), h0, gru, active)


def gru_recurrence(gi: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU,
                   active: list[int] | None = None) -> torch.Tensor:
    """The recurrent part alone, from precomputed input projections gi [T,R,3H] (W_ih x + b_ih)."""
    T, R = gi.shape[:2]
    active = [R] * T if active is None else [min(int(k), R) for k in active]
    if any(b > a for a, b in zip(active, active[1:])):
        raise ValueError("active row counts must be non-increasing (sort rows by length, longest first)")
    return _GRURecurrence.apply(gi, h0, gru.weight_hh_l0, gru.bias_hh_l0, active)
