"""Population baselines: self-play with a checkpoint pool (baselines/selfplay.py) and RPM, Ranked
Policy Memory (baselines/rpm.py): slot assignment statistics, pool and memory bookkeeping,
checkpoints, and short training runs where co-players really are past snapshots."""

import copy
import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import envs
from baselines import rpm, selfplay
from envs.base import EnvSpec
from marl.policy.learner import chunked, rows
from marl.policy.networks import ActInput, masked_logits
from marl.policy.runner import LEARNER, Episodes, RolloutCollector
from marl.policy.trainer import PolicyTrainer
from marl.registry import get_algorithm
from marl.trainer import Budget

N = 3  # agents in the unit-test spec


def _spec(n_agents: int = N) -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="test",
        num_envs=2,
        n_agents=n_agents,
        n_actions=4,
        obs_shape=(5,),
        state_shape=(6,),
        episode_limit=10,
    )


def _learner(algo: str, **overrides):
    torch.manual_seed(0)
    a = get_algorithm(algo)
    return a.make_learner(a.make_config(overrides), _spec())


def _rollout(live_keys=()):
    """What after_update reads of a rollout: the keys playing at its last step (rows of 1 copy)."""
    policy = torch.zeros(1, max(1, len(live_keys)), N, dtype=torch.long)
    for b, key in enumerate(live_keys):
        policy[0, b, 1] = key
    return SimpleNamespace(policy=policy)


def _no_episodes() -> Episodes:
    return Episodes.cat([], N)


def _episodes(returns, policy) -> Episodes:
    returns = torch.tensor(returns, dtype=torch.float32)
    return Episodes(
        returns,
        torch.tensor(policy, dtype=torch.long),
        torch.zeros(len(returns), dtype=torch.bool),
        torch.full((len(returns),), 5, dtype=torch.long),
    )


def _update(learner, episodes=None, live_keys=()):
    """One PPO update's bookkeeping, without the PPO: count it, then run the method's after_update.
    The actor's weights are marked with the update count so snapshots can be told apart."""
    learner.updates += 1
    with torch.no_grad():
        next(learner.actor.parameters()).fill_(float(learner.updates))
    return learner.after_update(
        _rollout(live_keys), episodes if episodes is not None else _no_episodes(), torch.Generator()
    )


def _mark(module) -> float:
    return float(next(module.parameters()).flatten()[0])


def _roundtrip(learner, algo: str, **overrides):
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    a = get_algorithm(algo)
    other = a.make_learner(a.make_config(overrides), _spec())
    other.load_state_dict(torch.load(buf, weights_only=False))
    return other


def test_modules_export_the_algorithm_interface():
    for module, algo in ((selfplay, "selfplay"), (rpm, "rpm")):
        assert module.KIND == "policy"
        assert get_algorithm(algo).config_cls is module.Config
        assert module.build_actor is selfplay.build_actor
    assert rpm.Config().max_per_key == 100 and selfplay.Config().latest_prob == 0.7


# Self-play ----------------------------------------------------------------------------------------


def test_selfplay_assignment_keeps_a_learner_slot_and_a_70_percent_recency_bias():
    g = torch.Generator().manual_seed(0)
    snapshots = [11, 12, 13, 14, 15]
    keys = selfplay.selfplay_assignment(20000, N, snapshots, 0.7, g)
    assert keys.shape == (20000, N) and keys.dtype == torch.long
    assert bool((keys == LEARNER).any(-1).all())  # every copy keeps a slot for the learner
    assert set(keys.unique().tolist()) <= {LEARNER, *snapshots}
    # One forced learner slot per copy; each of the N - 1 others is the newest policy w.p. 0.7.
    latest_share = ((keys == LEARNER).sum(-1).float() - 1).mean() / (N - 1)
    assert abs(float(latest_share) - 0.7) < 0.01
    older = keys[keys != LEARNER]
    freq = torch.bincount(older, minlength=16)[snapshots].float() / older.numel()
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.015)  # older snapshots uniformly

    # latest_prob 0: exactly one learner slot per copy, in a uniformly chosen position.
    keys = selfplay.selfplay_assignment(9000, N, snapshots, 0.0, g)
    assert bool(((keys == LEARNER).sum(-1) == 1).all())
    pos = (keys == LEARNER).float().mean(0)
    assert torch.allclose(pos, torch.full((N,), 1 / N), atol=0.02)
    # No snapshots yet, or a one-agent game: self-play.
    assert bool((selfplay.selfplay_assignment(7, N, [], 0.0, g) == LEARNER).all())
    assert bool((selfplay.selfplay_assignment(7, 1, snapshots, 0.0, g) == LEARNER).all())


def test_selfplay_snapshot_frequency_and_pool_limit():
    learner = _learner("selfplay", snapshot_interval=3, pool_size=4)
    for u in range(1, 31):
        stats = _update(learner)
        assert stats["pool_size"] == min(u // 3, 4)
    # Snapshots at updates 3, 6, ..., 30; the 4 newest can be drawn. The one dropped at update 30
    # may still be playing an episode drawn during that rollout: it is freed one update later.
    assert [learner.pool.meta[k - 1]["update"] for k in learner.active] == [21, 24, 27, 30]
    assert [learner.pool.meta[k - 1]["update"] for k in learner.retired] == [18]
    _update(learner)
    assert sorted(learner.pool.ids()) == [k - 1 for k in learner.active] and learner.retired == []
    # Each snapshot holds the actor as it was when taken, frozen.
    for key in learner.active:
        module = learner.module(key)
        assert _mark(module) == learner.pool.meta[key - 1]["update"]
        assert not any(p.requires_grad for p in module.parameters())
    assert learner.module(LEARNER) is learner.actor
    # Draws only ever use the pool's current members.
    keys = learner.assign(500, N, torch.Generator().manual_seed(1))
    assert set(keys.unique().tolist()) == {LEARNER, *learner.active}


def test_a_dropped_snapshot_lives_until_no_episode_plays_it():
    learner = _learner("selfplay", snapshot_interval=1, pool_size=1)
    _update(learner)
    first = learner.active[0]
    _update(learner, live_keys=[first])  # `first` is dropped from the pool while an episode plays it
    assert learner.active != [first] and learner.retired == [first]
    assert _mark(learner.module(first)) == 1.0
    assert first not in learner.assign(300, N, torch.Generator().manual_seed(0)).unique().tolist()
    _update(learner, live_keys=[first])  # still playing after the next rollout: kept
    assert _mark(learner.module(first)) == 1.0
    _update(learner)  # that episode is over: freed
    with pytest.raises(KeyError):
        learner.module(first)
    assert len(learner.pool) == 1 + len(learner.retired)


def test_selfplay_state_dict_roundtrip_restores_the_pool_and_the_draws():
    learner = _learner("selfplay", snapshot_interval=2, pool_size=3)
    for _ in range(9):
        _update(learner, live_keys=learner.active[:1])
    restored = _roundtrip(learner, "selfplay", snapshot_interval=2, pool_size=3)
    assert restored.active == learner.active and restored.retired == learner.retired
    assert restored.updates == learner.updates == 9 and restored.snapshot_update == 8
    for key in learner.active + learner.retired:
        for a, b in zip(learner.module(key).parameters(), restored.module(key).parameters()):
            assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(learner.assign(64, N, g1), restored.assign(64, N, g2))
    # Both go on identically: same next snapshot id, same drops.
    for lr in (learner, restored):
        _update(lr)
    assert restored.active == learner.active and restored.pool.ids() == learner.pool.ids()


# RPM ----------------------------------------------------------------------------------------------


def _spec_named(scenario: str, n_agents: int = N) -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario=scenario,
        num_envs=2,
        n_agents=n_agents,
        n_actions=4,
        obs_shape=(5,),
        state_shape=(6,),
        episode_limit=10,
    )


def test_rpm_defaults_follow_the_paper_and_psi_is_per_substrate():
    cfg = rpm.Config()
    assert (cfg.rank_return, cfg.rpm_slots, cfg.train_slots, cfg.psi) == ("total", "all", "all", None)
    assert cfg.max_per_key == 100 and cfg.rpm_anneal_fraction == 0.25
    a = get_algorithm("rpm")
    for scenario, psi in (
        ("stag_hunt_in_the_matrix__repeated", 1.0),
        ("clean_up", 10.0),
        ("collaborative_cooking__asymmetric", 20.0),
        ("3m", rpm.PSI_DEFAULT),
    ):
        learner = a.make_learner(a.make_config({}, scenario=scenario), _spec_named(scenario))
        assert learner.psi == psi == rpm.substrate_psi(learner.cfg, scenario)
        assert learner.trains_all_slots
    learner = a.make_learner(a.make_config({"psi": 0.5}), _spec_named("clean_up"))
    assert learner.psi == 0.5  # a number overrides the substrate's
    with pytest.raises(Exception, match="psi must be positive"):
        a.make_config({"psi": 0.0})
    with pytest.raises(Exception, match="rank_return"):
        a.make_config({"rank_return": "median"})


def test_rpm_rank_keys_by_hand():
    assert rpm.rank_key(2.5, 1.0) == 2
    assert rpm.rank_key(-0.1, 1.0) == -1
    assert rpm.rank_key(0.0, 1.0) == 0
    assert rpm.rank_key(7.9, 2.0) == 3
    assert rpm.rank_key(-4.0, 2.0) == -2

    learner = _learner("rpm", psi=0.75, save_interval=1)
    # Default: the TOTAL return (summed over the 3 agents) of the episodes the current learner
    # played in every slot: 2 + 3 + 4 = 9 (the second episode, with memory policies, does not rank)
    # -> floor(9 / 0.75) = 12.
    _update(learner, _episodes([[2.0, 3.0, 4.0], [1.0, 9.0, 9.0]], [[0, 0, 0], [0, 5, 5]]))
    # -3 -> floor(-4) = -4.
    _update(learner, _episodes([[-1.0, -1.0, -1.0]], [[0, 0, 0]]))
    # No episode ended: the window of recent ranking episodes, mean(9, -3) = 3 -> floor(4) = 4.
    _update(learner)
    assert {k: [learner.pool.meta[s - 1]["update"] for s in v] for k, v in learner.memory.items()} == {
        12: [1],
        -4: [2],
        4: [3],
    }

    # rank_episodes "all": both episodes rank, mean(9, 19) = 14 -> floor(18.67) = 18.
    learner = _learner("rpm", psi=0.75, save_interval=1, rank_episodes="all")
    _update(learner, _episodes([[2.0, 3.0, 4.0], [1.0, 9.0, 9.0]], [[0, 0, 0], [0, 5, 5]]))
    assert list(learner.memory) == [18]
    # rank_return "per_capita" (the earlier reconstruction): the learner's slots only, (3 + 1) / 2 = 2
    # -> floor(2.67) = 2.
    learner = _learner("rpm", psi=0.75, save_interval=1, rank_return="per_capita", rank_episodes="all")
    _update(learner, _episodes([[2.0, 3.0, 4.0], [1.0, 9.0, 9.0]], [[0, 0, 0], [0, 5, 5]]))
    assert list(learner.memory) == [2]


def test_rpm_saves_every_save_interval_and_only_after_a_return_is_known():
    learner = _learner("rpm", save_interval=2)
    _update(learner)
    _update(learner)  # due, but no episode has ended yet: nothing to rank it by
    assert learner.memory == {}
    _update(learner, _episodes([[0.5, 0.5, 0.5]], [[0, 0, 0]]))  # total 1.5, psi 1 (default) -> key 1
    _update(learner)
    assert learner.memory == {1: [1]} and learner.pool.meta[0]["update"] == 4


def test_rpm_keeps_at_most_max_per_key_and_drops_the_oldest():
    learner = _learner("rpm", save_interval=1, max_per_key=3)
    ep = _episodes([[1.5, 1.5, 1.5]], [[0, 0, 0]])  # total 4.5 -> key 4
    for _ in range(5):
        _update(learner, ep)
    _update(learner, _episodes([[5.0, 5.0, 5.0]], [[0, 0, 0]]))  # total 15 -> key 15
    assert [learner.pool.meta[k - 1]["update"] for k in learner.memory[4]] == [3, 4, 5]
    assert [learner.pool.meta[k - 1]["update"] for k in learner.memory[15]] == [6]
    assert len(learner.pool) == 4 and learner.retired == []


def test_rpm_sampling_waits_for_n_agents_keys():
    g = torch.Generator().manual_seed(0)
    one_key = [[1, 2, 3, 4]]
    assert bool((rpm.rpm_assignment(500, 2, one_key, 1.0, g) == LEARNER).all())
    two_keys = [[1], [2, 3]]
    assert bool((rpm.rpm_assignment(500, 3, two_keys, 1.0, g) == LEARNER).all())  # 2 keys < 3 agents
    assert bool((rpm.rpm_assignment(500, 2, two_keys, 1.0, g) != LEARNER).all())  # 2 keys >= 2 agents
    # The learner: the same rule on its own memory, filled by saves.
    learner = _learner("rpm", save_interval=1, rpm_prob_start=1.0, rpm_prob_end=1.0)
    for total_key in (0, 1):  # two keys
        _update(learner, _episodes([[total_key / 3] * 3], [[0, 0, 0]]))
    assert len(learner.bins()) == 2 and bool((learner.assign(200, N, g) == LEARNER).all())
    _update(learner, _episodes([[1.0] * 3], [[0, 0, 0]]))  # total 3 -> a third key
    assert len(learner.bins()) == 3 and bool((learner.assign(200, N, g) != LEARNER).all())


def test_rpm_every_slot_samples_keys_uniformly_and_independently():
    g = torch.Generator().manual_seed(0)
    memory = [[1], [2, 3, 4, 5, 6, 7, 8, 9, 10]]  # rank A: one policy, rank B: nine
    keys = rpm.rpm_assignment(20000, 2, memory, 1.0, g)
    assert bool((keys != LEARNER).all())  # RPM episode: every slot plays a memory policy
    freq = torch.bincount(keys.flatten(), minlength=11).float() / keys.numel()
    assert abs(float(freq[1]) - 0.5) < 0.015  # a key uniformly (half), not a policy uniformly (1/10)
    assert torch.allclose(freq[2:], torch.full((9,), 0.5 / 9), atol=0.01)
    both_a = ((keys == 1).all(-1)).float().mean()
    assert abs(float(both_a) - 0.25) < 0.015  # the slots draw independently
    # The probability of an RPM episode; self-play otherwise or while the memory is empty.
    memory3 = [[1], [2], [3, 4]]
    keys = rpm.rpm_assignment(20000, N, memory3, 0.3, g)
    rpm_copies = (keys != LEARNER).any(-1)
    assert abs(float(rpm_copies.float().mean()) - 0.3) < 0.015
    assert bool((keys[rpm_copies] != LEARNER).all())  # an RPM episode has no learner slot at all
    assert bool((rpm.rpm_assignment(50, N, memory3, 0.0, g) == LEARNER).all())
    assert bool((rpm.rpm_assignment(50, N, [[], [], []], 1.0, g) == LEARNER).all())
    # rpm_slots "co_players" (the earlier reconstruction): one uniformly chosen learner slot.
    keys = rpm.rpm_assignment(20000, 2, memory, 1.0, g, all_slots=False)
    assert bool(((keys == LEARNER).sum(-1) == 1).all())
    assert torch.allclose((keys == LEARNER).float().mean(0), torch.full((2,), 0.5), atol=0.015)
    learner = _learner("rpm", rpm_slots="co_players", rpm_prob_end=1.0)
    learner.memory = {0: [1], 1: [2], 2: [3]}
    assert bool(((learner.assign(100, N, g) == LEARNER).sum(-1) == 1).all())


def test_rpm_episode_probability_anneals_over_a_fraction_of_the_runs_updates():
    assert rpm.rpm_probability(0, 0.0, 0.5, 1000) == 0.0
    assert rpm.rpm_probability(500, 0.0, 0.5, 1000) == 0.25
    assert rpm.rpm_probability(1000, 0.0, 0.5, 1000) == 0.5
    assert rpm.rpm_probability(5000, 0.0, 0.5, 1000) == 0.5
    assert rpm.rpm_probability(3, 0.8, 0.2, 0) == 0.2
    assert rpm.anneal_updates(1000, 0.25) == 250 and rpm.anneal_updates(None, 0.25) == 0
    # The default schedule: 0 -> 0.5 over the first quarter of the run, whatever its length.
    for total in (40, 2000):
        learner = _learner("rpm")
        learner.set_budget(total)
        probs = {}
        for u in range(total + 1):
            if u in (0, total // 8, total // 4, total // 2, total):
                probs[u] = learner.rpm_prob()
            learner.updates += 1
        assert list(probs.values()) == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5])
    learner = _learner("rpm", rpm_prob_start=0.2, rpm_prob_end=0.6, rpm_anneal_fraction=0.5)
    assert learner.rpm_prob() == 0.6  # no budget (not run by a trainer): already annealed
    learner.set_budget(8)  # anneal over 4 updates
    probs = [learner.rpm_prob()] + [_update(learner)["rpm_prob"] for _ in range(6)]
    assert probs == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])


def test_rpm_state_dict_roundtrip_restores_the_memory_and_the_draws():
    overrides = dict(save_interval=1, max_per_key=2, rpm_prob_end=1.0, return_window=4)
    learner = _learner("rpm", **overrides)
    for r in (0.2, 0.25, 0.3, 1.5, 2.5, 2.7):  # totals 0.6, 0.75, 0.9 (key 0, thrice), 4.5, 7.5, 8.1
        _update(learner, _episodes([[r, r, r]], [[0, 0, 0]]), live_keys=[1])
    restored = _roundtrip(learner, "rpm", **overrides)
    assert len(learner.bins()) >= N  # so that the draws below really sample the memory
    assert restored.memory == learner.memory and restored.retired == learner.retired == [1]
    assert list(restored.recent_returns) == list(learner.recent_returns)
    assert restored.save_update == learner.save_update == 6
    assert restored.pool.ids() == learner.pool.ids()
    for sid, snap in learner.pool.snapshots.items():
        assert all(torch.equal(t, restored.pool.snapshots[sid][name]) for name, t in snap.items())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = learner.assign(64, N, g1)
    assert torch.equal(drawn, restored.assign(64, N, g2)) and bool((drawn != LEARNER).any())
    for lr in (learner, restored):
        _update(lr)  # no episode: both rank by the restored window
    assert restored.memory == learner.memory


# RPM's every-slot episodes and their data -------------------------------------------------------------


class LinearMemoryPolicy(nn.Module):
    """A stand-in memory policy whose action distribution is known exactly: logits = obs @ W
    (stateless; a 1-d hidden state it never changes)."""

    hidden_dim = 1

    def __init__(self, obs_dim: int, n_actions: int, seed: int):
        super().__init__()
        self.w = torch.randn(obs_dim, n_actions, generator=torch.Generator().manual_seed(seed)) * 3.0

    def initial_hidden(self, rows_: int, device="cpu") -> torch.Tensor:
        return torch.zeros(rows_, 1, device=device)

    def logits(self, obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        return masked_logits(obs.reshape(obs.shape[0], -1).float() @ self.w, avail)

    def act(self, inp: ActInput, h: torch.Tensor):
        return self.logits(inp.obs, inp.avail), h


def _rpm_rollout(train_slots: str = "all", T: int = 40, B: int = 4, seed: int = 0):
    """An RPM learner whose memory holds 3 keys (3m has 3 agents) of stand-in memory policies, with
    probability 0.5 of an RPM episode, and one collected rollout."""
    _needs("smax", "3m")
    env = envs.make_env("smax", "3m", num_envs=B, seed=seed)
    a = get_algorithm("rpm")
    cfg = a.make_config(
        {
            "num_envs": B,
            "rollout_length": T,
            "data_chunk_length": 10,
            "hidden_dim": 16,
            "ppo_epochs": 1,
            "rpm_prob_end": 0.5,
            "train_slots": train_slots,
        },
        scenario="3m",
    )
    torch.manual_seed(seed)
    learner = a.make_learner(cfg, env.spec)
    with torch.no_grad():  # a non-uniform learner policy, so that log-prob checks mean something
        learner.actor.head.weight.mul_(100.0)
    memory = {k: LinearMemoryPolicy(env.spec.obs_shape[0], env.spec.n_actions, seed=k) for k in (1, 2, 3)}
    learner.memory = {0: [1], 1: [2], 2: [3]}
    learner.module = lambda key: learner.actor if key == LEARNER else memory[key]
    collector = RolloutCollector(
        env,
        learner,
        learner.actor,
        learner.critic,
        torch.Generator().manual_seed(seed + 1),
        record_all_slots=learner.trains_all_slots,
    )
    collector.start(seed=seed)
    r, episodes = collector.collect(T)
    env.close()
    return learner, memory, r, episodes


def test_rpm_episodes_give_every_slot_a_memory_policy_and_record_its_behaviour():
    learner, memory, r, _ = _rpm_rollout()
    T, B, N3 = r.policy.shape
    L = learner.cfg.data_chunk_length
    # Copies are either self-play (all learner) or RPM episodes (every slot a memory policy).
    mixed = (r.policy == LEARNER).any(-1) & (r.policy != LEARNER).any(-1)
    assert not bool(mixed.any())
    rpm_steps = (r.policy != LEARNER).all(-1)
    assert 0 < float(rpm_steps.float().mean()) < 1  # both kinds occur
    # Behaviour log-probs of the memory-played rows are those of the policy that acted.
    for key, policy in memory.items():
        mine = r.policy == key
        if not bool(mine.any()):
            continue
        lp = torch.log_softmax(policy.logits(r.obs[mine], r.avail[mine]), -1)
        assert torch.allclose(r.logp[mine], lp.gather(-1, r.actions[mine].unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert (r.logp[r.policy != LEARNER] != 0).any()
    # The learner's recurrent state is recorded on every row, memory-played ones included: re-running
    # its actor over the stored chunks gives the stored states everywhere, and its log-probs where it acted.
    inp, h0, starts = learner.chunk_input(r, torch.arange((T // L) * B))
    seq = learner.actor.sequence(inp, h0, starts)
    h_prev = torch.cat([h0.unsqueeze(0), seq["hidden"][:-1]]) * (~starts).unsqueeze(-1).float()
    assert torch.allclose(h_prev, rows(chunked(r.actor_h, L)), atol=1e-5)
    assert (r.actor_h[r.policy != LEARNER].abs() > 1e-3).any()  # not zeros: the learner really ran there
    logp = torch.log_softmax(seq["logits"], -1).gather(-1, rows(chunked(r.actions, L)).unsqueeze(-1)).squeeze(-1)
    mask = rows(chunked(r.learner_mask, L))
    assert torch.allclose(logp[mask], rows(chunked(r.logp, L))[mask], atol=1e-5)


def _params_of(learner) -> dict[str, torch.Tensor]:
    return {
        **{f"actor.{k}": v for k, v in learner.actor.state_dict().items()},
        **{f"critic.{k}": v for k, v in learner.critic.state_dict().items()},
    }


def test_rpm_trains_on_every_slot_of_its_memory_episodes():
    learner, _, r, episodes = _rpm_rollout()
    assert learner.trains_all_slots and bool(learner.train_mask(r).all())
    memory_rows = (r.policy != LEARNER).all(-1)  # [T, B]: steps of RPM episodes

    def update(lrn, rollout):
        lrn = copy.deepcopy(lrn)
        stats = lrn.train_step(rollout, episodes, torch.Generator().manual_seed(0))
        return _params_of(lrn), stats

    base, stats = update(learner, r)
    assert stats["trained_fraction"] == 1.0 and stats["learner_fraction"] < 1.0
    changed = copy.deepcopy(r)
    changed.rewards[memory_rows] += 5.0  # only the memory policies' data changes
    other, _ = update(learner, changed)
    assert any(not torch.equal(base[k], other[k]) for k in base)  # ... and the update changes with it

    # train_slots "learner": the memory policies' data does not train theta.
    only, _, r2, episodes2 = _rpm_rollout(train_slots="learner")
    assert not only.trains_all_slots and torch.equal(only.train_mask(r2), r2.learner_mask)
    changed2 = copy.deepcopy(r2)
    changed2.rewards[(r2.policy != LEARNER).all(-1)] += 5.0
    changed2.logp[r2.policy != LEARNER] -= 1.0
    a2 = only.train_step(copy.deepcopy(r2), episodes2, torch.Generator().manual_seed(0))
    p_a = _params_of(only)
    only2 = _rpm_rollout(train_slots="learner")[0]
    only2.train_step(changed2, episodes2, torch.Generator().manual_seed(0))
    p_b = _params_of(only2)
    assert a2["learner_fraction"] < 1.0 and all(torch.equal(p_a[k], p_b[k]) for k in p_a)


# Training runs ----------------------------------------------------------------------------------------

SMAX_OVERRIDES = {"num_envs": 4, "rollout_length": 20, "data_chunk_length": 10, "ppo_epochs": 2}
ALGO_OVERRIDES = {
    "selfplay": {"snapshot_interval": 1},
    # Every episode meets the memory once it holds 3 (n_agents) keys; a tiny psi gives each save its own key.
    "rpm": {"save_interval": 1, "rpm_prob_start": 1.0, "rpm_prob_end": 1.0, "psi": 1e-3},
}


def _needs(family: str, scenario: str) -> None:
    reason = envs.unavailable_reason(family, scenario)
    if reason is not None:
        pytest.skip(reason)


def _trainer(algo: str, env_steps: int, run_dir=None, checkpoint_interval: int = 10**9) -> PolicyTrainer:
    return PolicyTrainer(
        algo,
        "smax",
        "3m",
        seed=3,
        budget=Budget(
            env_steps=env_steps, eval_interval=10**9, eval_episodes=2, checkpoint_interval=checkpoint_interval
        ),
        overrides={**SMAX_OVERRIDES, **ALGO_OVERRIDES[algo]},
        run_dir=run_dir,
    )


@pytest.mark.parametrize("algo", ["selfplay", "rpm"])
def test_training_on_smax_plays_against_past_snapshots(algo):
    _needs("smax", "3m")
    trainer = _trainer(algo, 640)
    learner = trainer.learner
    before = {k: v.clone() for k, v in learner.actor.state_dict().items()}
    seen: set[int] = set()
    module = learner.module
    learner.module = lambda key: (seen.add(key), module(key))[1]  # record who acted in rollouts
    rows = trainer.run()

    assert learner.updates == 640 // (4 * 20)
    assert any(k != LEARNER for k in seen)  # snapshots acted
    assert rows[-1]["learner_fraction"] < 1.0  # ... in slots that did not train theta
    assert any(not torch.equal(before[k], v) for k, v in learner.actor.state_dict().items())
    if algo == "selfplay":
        assert len(learner.active) == learner.updates
    else:
        assert rows[-1]["rpm_prob"] == 1.0 and sum(len(v) for v in learner.memory.values()) == learner.updates
        assert learner.total_updates == 8  # the trainer passed the budget: 640 / (4 x 20) updates
        assert rows[-1]["trained_fraction"] == 1.0  # every slot trained theta, memory-played ones too
    assert seen - {LEARNER} <= set(k + 1 for k in learner.pool.ids())


# PolicyTrainer.__init__ starts the collector (drawing every copy's players from the generator) and
# run() then re-seeds at the checkpoint it resumed from, drawing them again: exact for MAPPO (no
# draws), off by one draw for learners that sample co-players. Fix: start the collector in
# __init__ only when t_env < next_checkpoint. Remove this marker with that fix.
@pytest.mark.parametrize("algo", ["selfplay", "rpm"])
def test_interrupted_smax_run_resumes_to_the_same_population(algo, tmp_path):
    _needs("smax", "3m")
    whole = _trainer(algo, 480, tmp_path / "whole", checkpoint_interval=240)
    whole.run()
    _trainer(algo, 240, tmp_path / "cut", checkpoint_interval=240).run()
    resumed = _trainer(algo, 480, tmp_path / "cut", checkpoint_interval=240)
    assert resumed.resumed
    resumed.run()
    a, b = whole.learner.state_dict(), resumed.learner.state_dict()
    for k, v in a["actor"].items():
        assert torch.equal(v, b["actor"][k]), k
    ea, eb = a["extra"], b["extra"]
    assert set(ea) == set(eb)
    for key in set(ea) - {"pool"}:
        assert ea[key] == eb[key], key
    assert ea["pool"]["next_id"] == eb["pool"]["next_id"] and ea["pool"]["meta"] == eb["pool"]["meta"]
    for sid, snap in ea["pool"]["snapshots"].items():
        for name, t in snap.items():
            assert torch.equal(t, eb["pool"]["snapshots"][sid][name])


MP_SCENARIO = "prisoners_dilemma_in_the_matrix__repeated"


@pytest.mark.slow
def test_rpm_on_meltingpot_ranks_snapshots_by_total_return():
    pytest.importorskip("meltingpot")
    _needs("meltingpot", MP_SCENARIO)
    trainer = PolicyTrainer(
        "rpm",
        "meltingpot",
        MP_SCENARIO,
        seed=1,
        budget=Budget(env_steps=160, eval_interval=10**9, eval_episodes=1),
        overrides={
            "num_envs": 2,
            "rollout_length": 20,
            "data_chunk_length": 10,
            "ppo_epochs": 1,
            "eval_num_envs": 1,
            "save_interval": 1,
            "rpm_prob_start": 1.0,
            "rpm_prob_end": 1.0,
            "psi": 0.5,
        },
        env_options={"max_episode_frames": 30, "envs_per_worker": 2},
    )
    learner = trainer.learner
    window: list[float] = []  # total returns of the self-play episodes, as they end
    expected_keys: list[int] = []
    after = learner.after_update

    def recording(rollout, episodes, generator):
        fresh = []
        if episodes.count:
            selfplay_eps = (episodes.policy == LEARNER).all(-1)
            fresh = episodes.returns.sum(-1)[selfplay_eps].tolist()
        window.extend(fresh)
        ret = sum(fresh) / len(fresh) if fresh else (sum(window[-32:]) / len(window[-32:]) if window else None)
        if ret is not None:
            expected_keys.append(rpm.rank_key(ret, 0.5))
        return after(rollout, episodes, generator)

    learner.after_update = recording
    rows_ = trainer.run()
    assert learner.updates == 4 and window  # episodes of 30 frames ended during 80 steps per copy
    saved = sorted(k for k, v in learner.memory.items() for _ in v)
    assert saved == sorted(expected_keys) and 1 <= len(saved) <= 4
    assert rows_[-1]["rpm_psi"] == 0.5
