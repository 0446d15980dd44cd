"""A GRU over whole sequences with a hand-written backward pass (BPTT), for small networks on CPU.

PyTorch's CPU ``nn.GRU`` backward goes through autograd one time step and one small op at a time,
which dominates the update of a 64-unit recurrent agent trained on batches of whole episodes. Here
the input projections of all time steps are one matmul (outside, under autograd), the recurrence
runs in a plain loop without building a graph, and the backward pass is one loop with a single
matmul per step plus one large matmul for the recurrent weight gradient.

Batches of episodes are *packed*: rows are sorted longest first, so at step t the rows still inside
their episode are a prefix 0..k_t-1 (``active[t] = k_t``, non-increasing). The recurrence stores only
those rows, step after step ([sum_t k_t, ...] instead of [T, R, ...]): nothing is computed, stored,
zero-filled or scattered for the padding, which is often half of a batch of short episodes.

Two implementations of the recurrence, equal within float tolerance (tests/learners/test_fast_gru.py):
a small C++ extension (``marl/value/csrc/fast_gru.cpp``: no Python per step; forward: one matmul, ATen's
vectorized sigmoid/tanh and fused elementwise passes; backward: one fused pass and one matmul), built by ``make setup`` (scripts/build_extensions.sh) or on first use
into ``build/fast_gru/`` (gcc and ninja; about two minutes), and the pure-PyTorch loop below.
``MARL_FAST_GRU`` chooses: ``auto`` (default: the extension where it builds and loads, else the
PyTorch loop, saying so once on stderr), ``python`` (always the PyTorch loop), ``cpp`` (the
extension or an error). :func:`backend` says which one is in use.

The parameters are those of ``nn.GRU`` (same layout and equations), so state dicts stay standard:

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "csrc" / "fast_gru.cpp"
BUILD_DIR = ROOT / "build" / "fast_gru"
EXT_NAME = "marl_fast_gru"
_ext_state: dict = {}  # "module" (or None) and "reason" once the choice is made


def _load_extension(build: bool = True):
    """The compiled extension module, building it into BUILD_DIR first if it is missing or older
    than its source (and ``build``); raises on any failure. A built, fresh library is imported
    directly: no ninja run and no build lock, so processes killed at any moment (the suite's
    interrupt tests) never leave a lock behind that would stall the next one."""
    import importlib.util

    built = BUILD_DIR / f"{EXT_NAME}.so"
    fresh = built.exists() and built.stat().st_mtime >= SOURCE.stat().st_mtime
    if not fresh:
        if not build:
            raise RuntimeError(f"not built ({built} missing or stale; run `make setup` or scripts/build_extensions.sh)")
        from torch.utils import cpp_extension

        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        return cpp_extension.load(
            name=EXT_NAME, sources=[str(SOURCE)], build_directory=str(BUILD_DIR), extra_cflags=["-O3"], verbose=False
        )
    spec = importlib.util.spec_from_file_location(EXT_NAME, built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extension():
    """The C++ extension if it is selected and available, else None (the choice is made once per
    process, with one line on stderr when ``auto`` falls back to the PyTorch loop)."""
    if "module" in _ext_state:
        return _ext_state["module"]
    mode = os.environ.get("MARL_FAST_GRU", "auto").strip().lower()
    if mode not in ("auto", "python", "cpp"):
        raise ValueError(f"MARL_FAST_GRU={mode!r}; valid: auto, python, cpp")
    module, reason = None, "MARL_FAST_GRU=python"
    if mode != "python":
        try:
            module = _load_extension()
        except Exception as exc:  # no compiler, no ninja, a failed build: the PyTorch loop works everywhere
            if mode == "cpp":
                raise RuntimeError(f"MARL_FAST_GRU=cpp but the C++ GRU extension is unavailable: {exc}") from exc
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            print(
                f"fast_gru: C++ extension unavailable ({reason}); using the PyTorch recurrence (same values, slower)",
                file=sys.stderr,
            )
    _ext_state.update(module=module, reason=reason if module is None else "")
    return module


def backend() -> str:
    """Which recurrence runs on CPU tensors: "cpp" (the extension) or "python"."""
    return "cpp" if extension() is not None else "python"


def _use_extension(*tensors: torch.Tensor) -> object | None:
    if not all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        return None
    return extension()


class _PackedGRURecurrence(torch.autograd.Function):
    """gi [P,3H] (packed input projections incl. b_ih), h0 [R,H], w_hh [3H,H], b_hh [3H], active
    (k_t per step, non-increasing, sum = P) -> hs [P,H], the packed hidden states."""

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, active):
        ext = _use_extension(gi, h0, w_hh, b_hh)
        ctx.ext = ext
        ctx.active = active
        if ext is not None:
            hs, hn_all, rz_all, n_all = ext.gru_forward(gi, h0, w_hh, b_hh, active)
            ctx.save_for_backward(h0, w_hh, hs, hn_all, rz_all, n_all)
            return hs
        P, H3 = gi.shape
        H = H3 // 3
        # Every intermediate is written in place into packed storage (out=): the loop allocates
        # nothing and copies only the n third of each step's W_hh h + b_hh (for the backward).
        hs = gi.new_empty(P, H)
        gh_step = gi.new_empty(active[0], H3)  # one step's W_hh h + b_hh
        hn_all = gi.new_empty(P, H)  # its n third (W_hn h + b_hn), all the backward keeps of it
        rz_all = gi.new_empty(P, 2 * H)
        n_all = gi.new_empty(P, H)
        w_hh_t = w_hh.t()
        h = h0
        a = 0
        for k in active:
            b = a + k
            gh = torch.addmm(b_hh, h[:k], w_hh_t, out=gh_step[:k])
            hn = hn_all[a:b].copy_(gh[:, 2 * H :])
            rz = torch.sigmoid(torch.add(gi[a:b, : 2 * H], gh[:, : 2 * H], out=rz_all[a:b]), out=rz_all[a:b])
            n = torch.tanh(torch.addcmul(gi[a:b, 2 * H :], rz[:, :H], hn, out=n_all[a:b]), out=n_all[a:b])
            h = torch.lerp(n, h[:k], rz[:, H:], out=hs[a:b])  # n + z * (h - n)
            a = b
        ctx.save_for_backward(h0, w_hh, hs, hn_all, rz_all, n_all)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        h0, w_hh, hs, hn_all, rz_all, n_all = ctx.saved_tensors
        active = ctx.active
        if ctx.ext is not None:
            d_gates, dh0, grad_w_hh, grad_b_hh = ctx.ext.gru_backward(
                grad_hs, h0, w_hh, hs, hn_all, rz_all, n_all, active
            )
            return d_gates, dh0, grad_w_hh, grad_b_hh, None
        P, H = hs.shape
        starts = [0]
        for k in active[:-1]:
            starts.append(starts[-1] + k)
        # h_{t-1} of every packed row: the first k_t rows of the previous step (h0 at t = 0).
        h_prev = torch.cat(
            [h0[: active[0]]] + [hs[starts[t - 1] : starts[t - 1] + active[t]] for t in range(1, len(active))]
        )
        d_gh = grad_hs.new_empty(P, 3 * H)  # d(W_hh h + b_hh); its r, z parts equal the gates'
        d_an = grad_hs.new_empty(P, H)  # d(pre-activation of n)
        dh_next = torch.zeros_like(h0)  # rows inactive at t+1 get no gradient from there
        for t in range(len(active) - 1, -1, -1):
            k, a = active[t], starts[t]
            b = a + k
            r, z = rz_all[a:b, :H], rz_all[a:b, H:]
            n, hn = n_all[a:b], hn_all[a:b]
            dh = grad_hs[a:b] + dh_next[:k]
            da_n = torch.mul(dh * (1 - z), 1 - n * n, out=d_an[a:b])
            torch.mul(da_n * hn, r * (1 - r), out=d_gh[a:b, :H])
            torch.mul(dh * (h_prev[a:b] - n), z * (1 - z), out=d_gh[a:b, H : 2 * H])
            torch.mul(da_n, r, out=d_gh[a:b, 2 * H :])
            dh_next[:k] = torch.addmm(dh * z, d_gh[a:b], w_hh)
        grad_w_hh = d_gh.t() @ h_prev
        grad_b_hh = d_gh.sum(0)
        d_gates = d_gh  # the gradient of gi: the r, z thirds are d_gh's, the n third d_an
        d_gates[:, 2 * H :] = d_an
        return d_gates, dh_next, grad_w_hh, grad_b_hh, None


def check_active(active: list[int] | None, T: int, R: int) -> list[int]:
    """Validated per-step active row counts (default: all R rows at each of T steps), with the
    trailing steps where no row is active dropped."""
    active = [R] * T if active is None else [min(int(k), R) for k in active]
    if len(active) != T:
        raise ValueError(f"active has {len(active)} entries for {T} time steps")
    if any(b > a for a, b in zip(active, active[1:])):
        raise ValueError("active row counts must be non-increasing (sort rows by length, longest first)")
    while active and active[-1] == 0:
        active.pop()
    return active


def packed_index(active: list[int], R: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat positions t * R + r (r < active[t]) of the packed rows in a time-major [T, R] layout."""
    counts = torch.tensor(active, dtype=torch.long, device=device)
    steps = torch.arange(len(active), device=device).repeat_interleave(counts)
    starts = (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    return steps * R + (torch.arange(steps.shape[0], device=device) - starts)


def gru_packed(gi: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU, active: list[int]) -> torch.Tensor:
    """The recurrence over packed input projections gi [P,3H] (W_ih x + b_ih, step after step,
    k_t = active[t] rows each; from ``check_active``) -> packed hidden states [P,H]."""
    if sum(active) != gi.shape[0]:
        raise ValueError(f"{gi.shape[0]} packed rows for active counts summing to {sum(active)}")
    if not active:  # no row inside its sequence
        return gi.new_zeros(0, gru.hidden_size)
    return _PackedGRURecurrence.apply(gi, h0, gru.weight_hh_l0, gru.bias_hh_l0, active)


def gru_sequence(x: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU, active: list[int] | None = None) -> torch.Tensor:
    """Run a single-layer, time-major ``nn.GRU``'s parameters over x [T,R,I] from h0 [R,H];
    returns all hidden states [T,R,H]: the same function as ``gru(x, h0[None])[0]`` where rows are
    active, zeros elsewhere. ``active[t]`` (default: all rows) is the number of leading rows still
    inside their sequence at step t; rows must then be sorted by length, longest first."""
    return gru_recurrence(F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0), h0, gru, active)


def gru_recurrence(
    gi: torch.Tensor, h0: torch.Tensor, gru: torch.nn.GRU, active: list[int] | None = None
) -> torch.Tensor:
    """The recurrent part alone, from time-major input projections gi [T,R,3H] (W_ih x + b_ih);
    returns [T,R,H], zeros at inactive positions."""
    T, R = gi.shape[:2]
    active = check_active(active, T, R)
    if sum(active) == T * R:  # nothing to skip: the time-major layout is already packed
        return gru_packed(gi.reshape(T * R, -1), h0, gru, active).view(T, R, -1)
    index = packed_index(active, R, gi.device)
    hs = gru_packed(gi.reshape(T * R, -1).index_select(0, index), h0, gru, active)
    return hs.new_zeros(T * R, hs.shape[1]).index_copy(0, index, hs).view(T, R, -1)


if __name__ == "__main__":  # python -m marl.value.fast_gru --build (scripts/build_extensions.sh)
    import argparse

    parser = argparse.ArgumentParser(
        description="Build (if needed) and load the C++ GRU extension; print which recurrence is in use."
    )
    parser.add_argument("--build", action="store_true", help="build into build/fast_gru if missing or stale")
    args = parser.parse_args()
    try:
        _load_extension(build=args.build)
    except Exception as exc:  # the caller (set-up) goes on with the PyTorch recurrence
        print(f"fast_gru: C++ extension unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"fast_gru: C++ extension ready ({BUILD_DIR / (EXT_NAME + '.so')})")
