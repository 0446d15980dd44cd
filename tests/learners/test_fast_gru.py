"""The hand-written GRU recurrence equals nn.GRU in values and gradients, with and without packing."""

import pytest
import torch
from torch import nn

from marl.fast_gru import gru_sequence


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_matches_nn_gru_values_and_gradients():
    torch.manual_seed(0)
    gru = nn.GRU(5, 6).double()
    x = torch.randn(9, 7, 5, dtype=torch.double, requires_grad=True)  # time-major [T, R, I]
    h0 = torch.randn(7, 6, dtype=torch.double, requires_grad=True)
    weights = torch.randn(9, 7, 6, dtype=torch.double)
    inputs = [x, h0, *gru.parameters()]
    ref, _ = gru(x, h0[None])
    ours = gru_sequence(x, h0, gru)
    assert torch.allclose(ours, ref, atol=1e-12)
    for a, b in zip(_grads((ref * weights).sum(), inputs), _grads((ours * weights).sum(), inputs)):
        assert torch.allclose(a, b, atol=1e-10)


def test_packed_rows_equal_running_each_sequence_on_its_own():
    torch.manual_seed(1)
    gru = nn.GRU(4, 3).double()
    lengths = [6, 4, 4, 1]  # sorted, longest first
    x = torch.randn(6, 4, 4, dtype=torch.double, requires_grad=True)  # [T, R, I]
    h0 = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    active = [sum(length > t for length in lengths) for t in range(6)]
    mask = torch.tensor([[t < length for length in lengths] for t in range(6)]).unsqueeze(-1)  # [T, R, 1]
    weights = torch.randn(6, 4, 3, dtype=torch.double) * mask
    ours = gru_sequence(x, h0, gru, active)
    assert (ours[~mask.expand_as(ours)] == 0).all()
    inputs = [x, h0, *gru.parameters()]
    ref_loss = 0.0
    for i, length in enumerate(lengths):
        out, _ = gru(x[:length, i:i + 1], h0[i:i + 1][None])
        assert torch.allclose(ours[:length, i], out[:, 0], atol=1e-12)
        ref_loss = ref_loss + (out[:, 0] * weights[:length, i]).sum()
    for a, b in zip(_grads(ref_loss, inputs), _grads((ours * weights).sum(), inputs)):
        assert torch.allclose(a, b, atol=1e-10)


def test_rejects_unsorted_activity():
    gru = nn.GRU(2, 2)
    try:
        gru_sequence(torch.zeros(3, 2, 2), torch.zeros(2, 2), gru, active=[1, 2, 2])
    except ValueError as e:
        assert "non-increasing" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_agent_with_packed_rows_equals_the_dense_agent_on_valid_positions():
    """RecurrentAgent skips padded positions in every layer; values and gradients on positions
    inside an episode equal the dense computation's."""
    from marl.networks import RecurrentAgent

    torch.manual_seed(2)
    agent = RecurrentAgent(5, 4, hidden_dim=6).double()
    lengths = [5, 3, 3, 2]
    active = [sum(length > t for length in lengths) for t in range(5)]
    x = torch.randn(5, 4, 5, dtype=torch.double)
    mask = torch.tensor([[t < length for length in lengths] for t in range(5)])
    weights = torch.randn(5, 4, 4, dtype=torch.double) * mask.unsqueeze(-1)

    dense = agent(x)
    dense_grads = torch.autograd.grad((dense.q * weights).sum(), list(agent.parameters()))
    packed = agent(x, active=active)
    packed_grads = torch.autograd.grad((packed.q * weights).sum(), list(agent.parameters()))
    for name in ("q", "hidden", "embedding"):
        d, p = getattr(dense, name), getattr(packed, name)
        assert torch.allclose(d[mask], p[mask], atol=1e-12)
        assert (p[~mask] == 0).all()
    for a, b in zip(dense_grads, packed_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_packed_index_lists_the_rows_inside_their_sequence_step_by_step():
    from marl.fast_gru import check_active, packed_index

    assert packed_index([3, 2, 2, 1], R=3).tolist() == [0, 1, 2, 3, 4, 6, 7, 9]
    assert check_active([2, 1, 0, 0], T=4, R=2) == [2, 1]  # trailing empty steps dropped
    assert check_active(None, T=2, R=3) == [3, 3]
    with pytest.raises(ValueError, match="time steps"):
        check_active([2, 1], T=3, R=2)


def test_sequences_with_no_active_row_give_zeros_and_no_gradient_error():
    gru = nn.GRU(2, 3)
    x = torch.randn(4, 2, 2, requires_grad=True)
    out = gru_sequence(x, torch.zeros(2, 3), gru, active=[0, 0, 0, 0])
    assert out.shape == (4, 2, 3) and (out == 0).all()
