"""The hand-written GRU recurrence equals nn.GRU in values and gradients, with and without packing."""

import pytest
import torch
from torch import nn

from marl.value.fast_gru import gru_sequence


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
        out, _ = gru(x[:length, i : i + 1], h0[i : i + 1][None])
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
    from marl.value.networks import RecurrentAgent

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
    from marl.value.fast_gru import check_active, packed_index

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


# The C++ extension against the PyTorch recurrence --------------------------------------------

import shutil  # noqa: E402

from marl.value import fast_gru  # noqa: E402
from marl.value.fast_gru import gru_packed  # noqa: E402


@pytest.fixture(scope="module")
def cpp_ext():
    """The compiled extension (built here, once, into build/fast_gru if `make setup` has not):
    skipped only on machines without the toolchain, so a broken extension fails these tests."""
    if not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("ninja"):
        pytest.skip("no C++ toolchain (g++ and ninja): the PyTorch recurrence is the one in use")
    return fast_gru._load_extension(build=True)


@pytest.fixture
def force_backend(monkeypatch, cpp_ext):
    def force(name: str) -> None:
        monkeypatch.setattr(fast_gru, "_ext_state", {"module": cpp_ext if name == "cpp" else None, "reason": "test"})
        assert fast_gru.backend() == name

    return force


def _packed_case(dtype, H=64, lengths=(60, 60, 41, 33, 33, 20, 7, 1), agents=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = len(lengths) * agents
    T = max(lengths)
    active = [sum(length > t for length in lengths) * agents for t in range(T)]
    P = sum(active)
    gru = nn.GRU(H, H).to(dtype)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    gi = torch.randn(P, 3 * H, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn(R, H, generator=g, dtype=dtype, requires_grad=True)
    weights = torch.randn(P, H, generator=g, dtype=dtype)
    return gru, gi, h0, active, weights


def _run(gru, gi, h0, active, weights):
    hs = gru_packed(gi, h0, gru, active)
    inputs = [gi, h0, gru.weight_hh_l0, gru.bias_hh_l0]
    return hs.detach(), torch.autograd.grad((hs * weights).sum(), inputs)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_cpp_extension_equals_the_pytorch_recurrence_in_values_and_gradients(force_backend, dtype, atol):
    case = _packed_case(dtype)
    force_backend("python")
    ref_hs, ref_grads = _run(*case)
    force_backend("cpp")
    hs, grads = _run(*case)
    assert hs.shape == ref_hs.shape and hs.dtype == dtype
    assert float((hs - ref_hs).abs().max()) <= atol
    for name, a, b in zip(("gi", "h0", "w_hh", "b_hh"), ref_grads, grads):
        scale = max(1.0, float(a.abs().max()))
        assert float((a - b).abs().max()) <= atol * scale, (name, float((a - b).abs().max()))


def test_cpp_extension_passes_gradcheck_with_packed_rows(force_backend):
    force_backend("cpp")
    torch.manual_seed(3)
    gru = nn.GRU(4, 4).double()
    active = [5, 5, 3, 2, 2]
    gi = torch.randn(sum(active), 12, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    w_hh = gru.weight_hh_l0.detach().clone().requires_grad_(True)
    b_hh = gru.bias_hh_l0.detach().clone().requires_grad_(True)
    fn = lambda gi, h0, w, b: fast_gru._PackedGRURecurrence.apply(gi, h0, w, b, active)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (gi, h0, w_hh, b_hh))


def test_agent_training_pass_is_the_same_with_either_backend(force_backend):
    """The whole packed agent (fc1 -> GRU -> fc2) as a learner's update uses it, float32."""
    from marl.value.networks import RecurrentAgent

    torch.manual_seed(4)
    agent = RecurrentAgent(30, 9, hidden_dim=64)
    lengths = [40, 33, 33, 12]
    T, R = 41, 4 * 5
    active = [sum(length >= t for length in lengths) * 5 for t in range(T)]
    x = torch.randn(T, R, 30)
    results = {}
    for name in ("python", "cpp"):
        force_backend(name)
        out = agent(x, active=active)
        grads = torch.autograd.grad(out.q.pow(2).sum(), list(agent.parameters()))
        results[name] = (out.q.detach(), grads)
    (q_py, g_py), (q_cpp, g_cpp) = results["python"], results["cpp"]
    assert float((q_py - q_cpp).abs().max()) < 1e-5
    for a, b in zip(g_py, g_cpp):
        assert float((a - b).abs().max()) <= 1e-4 * max(1.0, float(a.abs().max()))


def test_cpp_extension_refuses_inconsistent_active_counts(cpp_ext):
    gi, h0 = torch.zeros(5, 6), torch.zeros(2, 2)
    w, b = torch.zeros(6, 2), torch.zeros(6)
    with pytest.raises(RuntimeError, match="summing to"):
        cpp_ext.gru_forward(gi, h0, w, b, [2, 2])
    with pytest.raises(RuntimeError, match="non-increasing"):
        cpp_ext.gru_forward(gi, h0, w, b, [1, 2, 2])


def test_backend_falls_back_to_pytorch_with_one_log_line_when_the_build_fails(monkeypatch, capsys):
    def broken(build=True):
        raise OSError("ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(fast_gru, "_load_extension", broken)
    monkeypatch.setattr(fast_gru, "_ext_state", {})
    monkeypatch.setenv("MARL_FAST_GRU", "auto")
    assert fast_gru.backend() == "python" and fast_gru.backend() == "python"
    err = capsys.readouterr().err
    assert err.count("fast_gru: C++ extension unavailable") == 1 and "subcommand failed" in err
    # and the recurrence still runs (the PyTorch loop)
    gru, gi, h0, active, weights = _packed_case(torch.float32, H=8, lengths=(3, 2), agents=1)
    assert gru_packed(gi, h0, gru, active).shape == (sum(active), 8)

    monkeypatch.setattr(fast_gru, "_ext_state", {})
    monkeypatch.setenv("MARL_FAST_GRU", "cpp")
    with pytest.raises(RuntimeError, match="MARL_FAST_GRU=cpp"):
        fast_gru.backend()

    monkeypatch.setattr(fast_gru, "_ext_state", {})
    monkeypatch.setenv("MARL_FAST_GRU", "python")
    monkeypatch.setattr(fast_gru, "_load_extension", lambda build=True: pytest.fail("must not build"))
    assert fast_gru.backend() == "python"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("algorithm", ["qmix", "ddn"])
def test_learner_updates_are_the_same_with_either_backend(force_backend, algorithm):
    """Three updates of a learner from the same state on the same batches: parameters equal
    within float tolerance whichever recurrence runs (no change of results)."""
    import copy

    import envs
    from marl.registry import get_algorithm

    spec = envs.make_env("predator_prey", "stag_hunt_small", num_envs=1).spec
    alg = get_algorithm(algorithm)
    torch.manual_seed(0)
    learner = alg.make_learner(alg.make_config({"hidden_dim": 32}), spec)
    state = copy.deepcopy(learner.state_dict())
    g = torch.Generator().manual_seed(5)
    C, T, N, A = 6, 12, spec.n_agents, spec.n_actions
    lengths = torch.tensor([12, 12, 9, 7, 3, 1])
    filled = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    batches = [
        {
            "obs": torch.randint(0, 2, (C, T + 1, N, *spec.obs_shape), generator=g).float(),
            "state": torch.randint(0, 2, (C, T + 1, *spec.state_shape), generator=g).float(),
            "avail_actions": torch.ones(C, T + 1, N, A, dtype=torch.bool),
            "actions": torch.randint(0, A, (C, T, N), generator=g),
            "reward": torch.randn(C, T, generator=g) * filled,
            "terminated": filled & (torch.arange(T).unsqueeze(0) == lengths.unsqueeze(1) - 1),
            "filled": filled,
        }
        for _ in range(3)
    ]
    params = {}
    for name in ("python", "cpp"):
        force_backend(name)
        learner.load_state_dict(copy.deepcopy(state))
        for episode, batch in enumerate(batches):
            torch.manual_seed(episode)  # DDN's IDM mask draws
            learner.train_step(batch, episode)
        params[name] = {
            k: v.detach().clone()
            for m, mod in learner.modules().items()
            for k, v in ((f"{m}.{n}", p) for n, p in mod.named_parameters())
        }
    for k in params["python"]:
        a, b = params["python"][k], params["cpp"][k]
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(a.abs().max())), k
