"""Math of the shared value-learning machinery against hand-computed values."""

import math

import pytest
import torch

from marl.value.buffer import EpisodeLayout, EpisodeReplayBuffer
from marl.config import ConfigError, build_config
from marl.value.config import ValueLearnerConfig
from marl.value.controller import LinearSchedule, epsilon_greedy
from marl.value.networks import QMixer, RecurrentAgent, SplitInput, VDNMixer, build_agent_inputs
from marl.value.learner import previous_actions, td_lambda_targets


def _set_linear(layer: torch.nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_qmixer_matches_hand_computation():
    mixer = QMixer(n_agents=2, state_dim=1, embed_dim=1, hypernet_layers=1)
    _set_linear(mixer.hyper_w1, [[2.0], [-3.0]], [0.0, 0.0])  # |w1| = [2, 3]
    _set_linear(mixer.hyper_b1, [[0.5]], [0.0])  # b1 = 0.5
    _set_linear(mixer.hyper_w_final, [[-2.0]], [0.0])  # |w_final| = 2
    _set_linear(mixer.hyper_v[0], [[1.0]], [0.0])
    _set_linear(mixer.hyper_v[2], [[3.0]], [1.0])  # V(s=1) = 3 * relu(1) + 1 = 4
    q_tot = mixer(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0]]))
    hidden = math.exp(-0.5) - 1.0  # elu(2*1 + 3*(-1) + 0.5)
    assert q_tot.item() == pytest.approx(2.0 * hidden + 4.0, abs=1e-6)


def test_qmixer_is_monotonic_in_every_agent_q():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=5)
    qs = torch.randn(64, 3, requires_grad=True)
    states = torch.randn(64, 5)
    mixer(qs, states).sum().backward()
    assert (qs.grad >= 0).all()
    # Raising any single agent's Q never lowers Q_tot.
    base = mixer(qs.detach(), states)
    for i in range(3):
        bumped = qs.detach().clone()
        bumped[:, i] += 0.7
        assert (mixer(bumped, states) >= base - 1e-6).all()


def test_qmixer_keeps_leading_dims():
    mixer = QMixer(n_agents=2, state_dim=4)
    assert mixer(torch.randn(3, 7, 2), torch.randn(3, 7, 4)).shape == (3, 7)


def test_vdn_is_the_sum():
    qs = torch.tensor([[1.0, 2.5, -0.5], [0.0, 0.0, 3.0]])
    assert torch.equal(VDNMixer()(qs), torch.tensor([3.0, 3.0]))


def test_td_lambda_zero_is_one_step_target():
    reward = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    terminated = torch.tensor([[False, False, True, False]])
    mask = torch.tensor([[True, True, True, False]])
    q = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    y = td_lambda_targets(reward, terminated, mask, q, gamma=0.5, td_lambda=0.0)
    assert torch.allclose(y[0, :3], torch.tensor([1.0 + 0.5 * 20.0, 2.0 + 0.5 * 30.0, 3.0]))


def test_td_lambda_zero_shortcut_equals_the_recursion_bitwise():
    """lambda = 0 takes a loop-free path; it must give exactly the backward recursion's values
    (padding included) on random episodes of mixed lengths, terminal and truncated."""
    g = torch.Generator().manual_seed(0)
    C, T, gamma = 16, 30, 0.99
    lengths = torch.randint(1, T + 1, (C,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    terminated = torch.zeros(C, T, dtype=torch.bool)
    ends = torch.rand(C, generator=g) < 0.5
    terminated[torch.arange(C)[ends], lengths[ends] - 1] = True
    reward = torch.randn(C, T, generator=g) * mask
    q = torch.randn(C, T + 1, generator=g)
    expected = torch.empty(C, T)
    for t in range(T):  # the recursion with lambda = 0 written out: no G_{t+1} term survives
        one = reward[:, t] + gamma * (1.0 - terminated[:, t].float()) * ((1.0 - 0.0) * q[:, t + 1])
        expected[:, t] = torch.where(mask[:, t], one, q[:, t])
    assert torch.equal(td_lambda_targets(reward, terminated, mask, q, gamma, 0.0), expected)


def test_td_lambda_hand_computed_truncated_episode():
    # Episode of length 2, truncated (not terminal): bootstraps from Q at the final observation.
    gamma, lam = 0.9, 0.5
    reward = torch.tensor([[1.0, 2.0, 0.0]])
    terminated = torch.zeros(1, 3, dtype=torch.bool)
    mask = torch.tensor([[True, True, False]])
    q = torch.tensor([[5.0, 6.0, 7.0, 99.0]])  # index 2 = final observation, 3 = padding
    y = td_lambda_targets(reward, terminated, mask, q, gamma, lam)
    g1 = 2.0 + gamma * 7.0
    g0 = 1.0 + gamma * ((1 - lam) * 6.0 + lam * g1)
    assert y[0, 1].item() == pytest.approx(g1)
    assert y[0, 0].item() == pytest.approx(g0)


def test_td_lambda_one_is_monte_carlo_for_terminal_episode():
    reward = torch.tensor([[1.0, 1.0, 1.0]])
    terminated = torch.tensor([[False, False, True]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    q = torch.tensor([[100.0, 100.0, 100.0, 100.0]])
    y = td_lambda_targets(reward, terminated, mask, q, gamma=0.5, td_lambda=1.0)
    assert torch.allclose(y[0], torch.tensor([1.75, 1.5, 1.0]))


def test_double_q_uses_online_argmax_over_available_actions():
    from types import SimpleNamespace

    from marl.value.learner import QLearner

    online = torch.tensor([[[[1.0, 5.0, 3.0]]]])  # best overall: action 1
    target = torch.tensor([[[[10.0, 20.0, 30.0]]]])
    avail = torch.tensor([[[[True, False, True]]]])  # action 1 unavailable -> online argmax = 2
    fake = SimpleNamespace(cfg=SimpleNamespace(double_q=True))
    assert QLearner.greedy_target_values(fake, online, target, avail).item() == 30.0
    fake.cfg.double_q = False
    avail = torch.tensor([[[[True, True, False]]]])
    assert QLearner.greedy_target_values(fake, online, target, avail).item() == 20.0


def test_epsilon_greedy_respects_availability():
    g = torch.Generator().manual_seed(0)
    q = torch.tensor([[5.0, 1.0, 9.0, 2.0]]).expand(4000, 4)
    avail = torch.tensor([[True, True, False, True]]).expand(4000, 4)
    assert (epsilon_greedy(q, avail, 0.0, g) == 0).all()  # 9.0 is unavailable
    actions = epsilon_greedy(q, avail, 1.0, g)
    counts = torch.bincount(actions, minlength=4).float() / 4000
    assert counts[2] == 0
    assert torch.allclose(counts[[0, 1, 3]], torch.full((3,), 1 / 3), atol=0.03)


def test_linear_schedule():
    s = LinearSchedule(1.0, 0.05, 100)
    assert s(0) == 1.0 and s(50) == pytest.approx(0.525) and s(100) == pytest.approx(0.05) and s(10**6) == 0.05


def test_agent_inputs_and_previous_actions():
    obs = torch.zeros(1, 2, 3)
    inputs = build_agent_inputs(obs, torch.tensor([[-1, 2]]), n_actions=3)
    assert inputs.shape == (1, 2, 3 + 3 + 2)
    assert inputs[0, 0, 3:6].tolist() == [0, 0, 0]  # no previous action
    assert inputs[0, 1, 3:6].tolist() == [0, 0, 1]
    assert inputs[0, :, 6:].tolist() == [[1, 0], [0, 1]]  # agent id
    acts = torch.tensor([[[1, 2], [0, 1]]])  # [C=1, T=2, N=2]
    assert previous_actions(acts).tolist() == [[[-1, -1], [1, 2], [0, 1]]]


def test_recurrent_agent_sequence_equals_stepwise():
    torch.manual_seed(0)
    agent = RecurrentAgent(6, 4, hidden_dim=8)
    x = torch.randn(5, 3, 6)  # time-major [T, R, I]
    full = agent(x)
    h = torch.zeros(3, 8)
    for t in range(5):
        step = agent(x[t : t + 1], h)  # the acting path (nn.GRU, one step)
        assert torch.allclose(step.q[0], full.q[t], atol=1e-6)
        h = step.hidden[-1]


def _layout() -> EpisodeLayout:
    return EpisodeLayout(max_len=4, n_agents=2, n_actions=3, obs_shape=(5,), state_shape=(6,))


def _episodes(layout: EpisodeLayout, lengths: list[int], tag: float) -> tuple[dict, torch.Tensor]:
    data = layout.allocate(len(lengths), torch.device("cpu"))
    for i, length in enumerate(lengths):
        data["obs"][i, : length + 1] = tag + i
        data["filled"][i, :length] = True
    return data, torch.tensor(lengths)


def test_replay_ring_buffer_and_sampling():
    layout = _layout()
    buf = EpisodeReplayBuffer(layout, capacity=3)
    buf.insert(*_episodes(layout, [1, 2], tag=10.0))
    assert len(buf) == 2 and not buf.can_sample(3)
    buf.insert(*_episodes(layout, [2, 1], tag=20.0))  # overwrites the oldest slot
    assert len(buf) == 3 and buf.insert_pos == 1
    assert buf.data["obs"][0, 0, 0, 0].item() == 21.0  # second of the new ones went to slot 0
    g = torch.Generator().manual_seed(0)
    batch = buf.sample(3, g)
    # cut to the longest sampled episode (2 steps): obs-like fields keep one extra index
    assert batch["filled"].shape == (3, 2) and batch["obs"].shape == (3, 3, 2, 5)
    # without replacement: three distinct episodes
    assert len({float(v) for v in batch["obs"][:, 0, 0, 0]}) == 3


def test_replay_state_dict_roundtrip():
    layout = _layout()
    buf = EpisodeReplayBuffer(layout, capacity=5)
    buf.insert(*_episodes(layout, [3, 4], tag=1.0))
    other = EpisodeReplayBuffer(layout, capacity=5)
    other.load_state_dict(buf.state_dict())
    assert other.size == 2 and other.insert_pos == 2
    for k in buf.data:
        assert torch.equal(other.data[k][:2], buf.data[k][:2])


def test_replay_checkpoints_without_a_copy(tmp_path):
    """A buffer's state is its own memory, full or not (no second replay in memory at a
    checkpoint); a partial one writes only its filled rows; both round-trip through the streamed
    atomic save."""
    from marl.run_io import atomic_torch_save

    layout = _layout()
    buf = EpisodeReplayBuffer(layout, capacity=40)
    buf.insert(*_episodes(layout, [3], tag=1.0))
    partial = buf.state_dict()
    for k, v in partial["data"].items():
        assert v.shape == (1, *buf.data[k].shape[1:]) and v.data_ptr() == buf.data[k].data_ptr()
        assert v.untyped_storage().nbytes() == v.numel() * v.element_size()  # just the filled row
        assert torch.equal(v, buf.data[k][:1])
    atomic_torch_save(tmp_path / "partial.pt", {"buffer": partial})
    # Against plain views of the same row (torch.save writes their whole storages): the 39
    # unfilled rows are not written (up to the zip format's per-record alignment padding).
    views = {**partial, "data": {k: v[:1] for k, v in buf.data.items()}, "lengths": buf.lengths[:1]}
    atomic_torch_save(tmp_path / "views.pt", {"buffer": views})
    unfilled = sum(v[1:].numel() * v.element_size() for v in [*buf.data.values(), buf.lengths])
    assert (tmp_path / "views.pt").stat().st_size - (tmp_path / "partial.pt").stat().st_size >= unfilled - 64 * 8
    (tmp_path / "views.pt").unlink()
    restored = EpisodeReplayBuffer(layout, capacity=40)
    restored.load_state_dict(torch.load(tmp_path / "partial.pt", weights_only=False)["buffer"])
    assert (restored.size, restored.insert_pos) == (1, 1)
    for k in buf.data:
        assert torch.equal(restored.data[k], buf.data[k])
    (tmp_path / "partial.pt").unlink()
    buf.insert(*_episodes(layout, [4, 2] * 20, tag=2.0))  # wraps: full
    state = buf.state_dict()
    assert all(v.data_ptr() == buf.data[k].data_ptr() for k, v in state["data"].items())
    atomic_torch_save(tmp_path / "ckpt.pt", {"buffer": state})
    other = EpisodeReplayBuffer(layout, capacity=40)
    other.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False)["buffer"])
    assert (other.size, other.insert_pos) == (buf.size, buf.insert_pos)
    assert torch.equal(other.lengths, buf.lengths)
    for k in buf.data:
        assert torch.equal(other.data[k], buf.data[k])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_build_config_profiles_and_errors():
    cfg = build_config(ValueLearnerConfig, {"profile": "pymarl2"})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.num_envs, cfg.td_lambda) == ("adam", 1e-3, 128, 8, 0.6)
    assert build_config(ValueLearnerConfig, {}).optimizer == "rmsprop"
    six_h = build_config(ValueLearnerConfig, {"profile": "pymarl2"}, scenario="6h_vs_8z")
    assert (six_h.td_lambda, six_h.epsilon_anneal_time) == (0.3, 500_000)
    assert build_config(ValueLearnerConfig, {"lr": 1}).lr == 1.0  # ints are fine for floats
    with pytest.raises(ConfigError, match="valid keys: .*hidden_dim"):
        build_config(ValueLearnerConfig, {"hiden_dim": 3})
    with pytest.raises(ConfigError, match="'batch_size' must be int"):
        build_config(ValueLearnerConfig, {"batch_size": "big"})
    with pytest.raises(ConfigError, match="valid profiles: pymarl, pymarl2"):
        build_config(ValueLearnerConfig, {"profile": "fast"})
    # Each learner kind accepts only its own profiles: a value learner has no MAPPO profile.
    with pytest.raises(ConfigError, match="valid profiles: pymarl, pymarl2"):
        build_config(ValueLearnerConfig, {"profile": "mappo"})
    from marl.policy.config import PolicyLearnerConfig

    with pytest.raises(ConfigError, match="valid profiles: mappo$"):
        build_config(PolicyLearnerConfig, {"profile": "pymarl2"})


def _played_episodes(n_envs: int = 3, episodes: int = 6):
    import envs
    from marl.value.controller import AgentController
    from marl.value.networks import agent_input_dim
    from marl.value.runner import EpisodeRunner

    env = envs.make_env("predator_prey", "stag_hunt_small", num_envs=n_envs, seed=3, episode_limit=9)
    torch.manual_seed(0)
    spec = env.spec
    agent = RecurrentAgent(agent_input_dim(spec.obs_shape[0], spec.n_agents, spec.n_actions), spec.n_actions, 8)
    runner = EpisodeRunner(env, AgentController(agent, spec.n_agents, spec.n_actions), torch.Generator().manual_seed(1))
    runner.start(seed=3)
    return runner.layout, runner.collect(min_episodes=episodes, epsilon=lambda t: 1.0, t_env=0)


def test_replay_stores_compact_dtypes_and_samples_todays_values():
    layout, got = _played_episodes()
    assert layout.obs_storage_dtype == torch.uint8 and layout.state_storage_dtype == torch.uint8
    buf = EpisodeReplayBuffer(layout, capacity=got.count)
    buf.insert(got.data, got.lengths)
    stored = {k: v.dtype for k, v in buf.data.items()}
    assert stored == {
        "obs": torch.uint8,
        "state": torch.uint8,
        "avail_actions": torch.bool,
        "actions": torch.int8,
        "reward": torch.float32,
        "terminated": torch.bool,
        "filled": torch.bool,
    }
    batch = buf.sample(got.count, torch.Generator().manual_seed(0))
    # The sampled batch is the uncompacted one, dtype for dtype and value for value.
    order = torch.argsort(got.lengths, descending=True, stable=True)
    sampled_lengths = batch["filled"].sum(1)
    assert torch.equal(sampled_lengths, got.lengths[order].sort(descending=True).values)
    for name, v in batch.items():
        assert v.dtype == got.data[name].dtype, name
    # Match every sampled episode to a played one (same length, same content).
    T = batch["filled"].shape[1]
    remaining = list(range(got.count))
    for i in range(got.count):
        match = [
            j for j in remaining if all(torch.equal(batch[k][i], got.data[k][j, : batch[k].shape[1]]) for k in batch)
        ]
        assert match, f"sampled episode {i} is not one that was inserted"
        remaining.remove(match[0])
    assert T == int(got.lengths.max())


def test_replay_refuses_values_its_compact_dtype_cannot_hold():
    layout, got = _played_episodes(episodes=1)
    buf = EpisodeReplayBuffer(layout, capacity=4)
    data = {k: v.clone() for k, v in got.data.items()}
    data["obs"][0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="'obs'.*uint8"):
        buf.insert(data, got.lengths)
    # Float observations of other environments are stored as they are (no compact dtype declared).
    plain = EpisodeReplayBuffer(_layout(), capacity=2)
    assert plain.data["obs"].dtype == torch.float32 and plain.data["actions"].dtype == torch.int8
    plain.insert(*_episodes(_layout(), [2], tag=0.25))
    assert plain.sample(1, torch.Generator().manual_seed(0))["obs"][0, 0, 0, 0].item() == 0.25


def test_predator_prey_paper_replay_fits_in_one_gigabyte():
    import envs

    spec = envs.make_env("predator_prey", "stag_hunt", num_envs=1, seed=0).spec
    layout = EpisodeLayout.from_spec(spec)
    nbytes = lambda data: sum(v.numel() * v.element_size() for v in data.values())  # noqa: E731
    compact = nbytes(layout.allocate(ValueLearnerConfig().buffer_size, torch.device("meta"), compact=True))
    full = nbytes(layout.allocate(ValueLearnerConfig().buffer_size, torch.device("meta")))
    assert full > 3.5e9 and compact < 1.0e9, (full, compact)


def test_online_and_target_agents_share_one_packed_input_construction():
    """QLearner.agent_q_pair (one packing for online and target agent) equals two agent_q calls,
    values and gradients, and an unsorted batch (padded path) gives the same loss."""
    import envs
    from marl.value.learner import QLearner

    spec = envs.make_env("predator_prey", "stag_hunt_small", num_envs=1).spec
    torch.manual_seed(0)
    learner = QLearner(build_config(ValueLearnerConfig, {"hidden_dim": 16}), spec)
    with torch.no_grad():
        for p in learner.target_agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    C, T, N, A = 4, 6, spec.n_agents, spec.n_actions
    lengths = torch.tensor([6, 4, 4, 1])
    filled = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    batch = {
        "obs": torch.rand(C, T + 1, N, *spec.obs_shape, generator=g),
        "state": torch.rand(C, T + 1, *spec.state_shape, generator=g),
        "avail_actions": torch.ones(C, T + 1, N, A, dtype=torch.bool),
        "actions": torch.randint(0, A, (C, T, N), generator=g),
        "reward": torch.randn(C, T, generator=g) * filled,
        "terminated": filled & (torch.arange(T).unsqueeze(0) == lengths.unsqueeze(1) - 1),
        "filled": filled,
    }
    q, q_target = learner.agent_q_pair(learner.agent, learner.target_agent, batch)
    ref_q, ref_target = learner.agent_q(learner.agent, batch), learner.agent_q(learner.target_agent, batch)
    assert not q_target.requires_grad and q.requires_grad
    assert torch.allclose(q, ref_q, atol=1e-6) and torch.allclose(q_target, ref_target, atol=1e-6)
    w = torch.randn(q.shape, generator=g)
    ga = torch.autograd.grad((q * w).sum(), list(learner.agent.parameters()))
    gb = torch.autograd.grad((ref_q * w).sum(), list(learner.agent.parameters()))
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, atol=1e-5)
    loss_sorted, _ = learner.compute_loss(batch)
    loss_unsorted, _ = learner.compute_loss({k: v.flip(0) for k, v in batch.items()})
    assert float(loss_sorted.detach()) == pytest.approx(float(loss_unsorted.detach()), rel=1e-5)


@pytest.mark.parametrize("rows", [7, 384, 5000])
def test_split_input_first_layer_equals_the_concatenated_one_bit_for_bit(rows):
    """An agent fed its packed input as a SplitInput (a learned block, then a fixed one) returns the
    outputs and sets the parameters' gradients the concatenated input gives, bit for bit, and the
    learned block's gradient within float rounding: grad.mm(weight[:, :k]) is the first k columns of
    grad.mm(weight), summed in the BLAS's order for that width (the same bits on this project's
    CPU at DDN's widths, 64 of 178, but not at every width)."""
    from marl.value.fast_gru import packed_index

    torch.manual_seed(0)
    agent = RecurrentAgent(input_dim=12, n_actions=5, hidden_dim=16)
    T, R = 4, max(rows // 4, 1)
    active = [R] * T
    index = packed_index(active, R, torch.device("cpu"))
    P = index.shape[0]
    learned_src = torch.randn(P, 5, requires_grad=True)
    fixed = torch.randn(P, 7)

    def run(split: bool):
        agent.zero_grad(set_to_none=True)
        learned_src.grad = None
        learned = learned_src * 2.0  # an interior node, as the fusion block's output
        packed = SplitInput(learned, fixed) if split else torch.cat([learned, fixed], dim=-1)
        out = agent.forward_packed(packed, active, index, T, R)
        (out.q.square().sum() + out.embedding.sum()).backward()
        return out, learned_src.grad.clone(), {n: p.grad.clone() for n, p in agent.named_parameters()}

    out_cat, g_cat, p_cat = run(split=False)
    out_split, g_split, p_split = run(split=True)
    for a, b in zip(out_cat, out_split):
        assert torch.equal(a, b)
    assert torch.allclose(g_cat, g_split, rtol=1e-5, atol=1e-6)
    assert p_cat.keys() == p_split.keys()
    for name in p_cat:
        assert torch.equal(p_cat[name], p_split[name]), name
