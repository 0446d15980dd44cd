"""Population baselines: self-play with a checkpoint pool (baselines/selfplay.py) and RPM, Ranked
Policy Memory (baselines/rpm.py): slot assignment statistics, pool and memory bookkeeping,
checkpoints, and short training runs where co-players really are past snapshots."""

import io
from types import SimpleNamespace

import pytest
import torch

import envs
from baselines import rpm, selfplay
from envs.base import EnvSpec
from marl.policy_runner import LEARNER, Episodes
from marl.policy_train import PolicyTrainer
from marl.registry import get_algorithm
from marl.train import Budget

N = 3  # agents in the unit-test spec


def _spec(n_agents: int = N) -> EnvSpec:
    return EnvSpec(family="test", scenario="test", num_envs=2, n_agents=n_agents, n_actions=4, obs_shape=(5,),
                   state_shape=(6,), episode_limit=10)


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
    return Episodes(returns, torch.tensor(policy, dtype=torch.long), torch.zeros(len(returns), dtype=torch.bool),
                    torch.full((len(returns),), 5, dtype=torch.long))


def _update(learner, episodes=None, live_keys=()):
    """One PPO update's bookkeeping, without the PPO: count it, then run the method's after_update.
    The actor's weights are marked with the update count so snapshots can be told apart."""
    learner.updates += 1
    with torch.no_grad():
        next(learner.actor.parameters()).fill_(float(learner.updates))
    return learner.after_update(_rollout(live_keys), episodes if episodes is not None else _no_episodes(),
                                torch.Generator())


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

def test_rpm_rank_keys_by_hand():
    assert rpm.rank_key(2.5, 1.0) == 2
    assert rpm.rank_key(-0.1, 1.0) == -1
    assert rpm.rank_key(0.0, 1.0) == 0
    assert rpm.rank_key(7.9, 2.0) == 3
    assert rpm.rank_key(-4.0, 2.0) == -2

    learner = _learner("rpm", psi=0.75, save_interval=1)
    # Per-capita learner returns (3 + 2 + 4) / 3 = 3 and 1 (the learner's slot only): mean 2 -> floor(2 / 0.75) = 2.
    _update(learner, _episodes([[2.0, 3.0, 4.0], [1.0, 9.0, 9.0]], [[0, 0, 0], [0, 5, 5]]))
    # -1 -> floor(-1.33) = -2.
    _update(learner, _episodes([[-1.0, -1.0, -1.0]], [[0, 0, 0]]))
    # No episode ended: the window of recent episodes, mean(3, 1, -1) = 1 -> floor(1.33) = 1.
    _update(learner)
    assert {k: [learner.pool.meta[s - 1]["update"] for s in v] for k, v in learner.memory.items()} == \
        {2: [1], -2: [2], 1: [3]}


def test_rpm_saves_every_save_interval_and_only_after_a_return_is_known():
    learner = _learner("rpm", save_interval=2)
    _update(learner)
    _update(learner)  # due, but no episode has ended yet: nothing to rank it by
    assert learner.memory == {}
    _update(learner, _episodes([[0.5, 0.5, 0.5]], [[0, 0, 0]]))
    _update(learner)
    assert learner.memory == {0: [1]} and learner.pool.meta[0]["update"] == 4


def test_rpm_keeps_at_most_max_per_key_and_drops_the_oldest():
    learner = _learner("rpm", save_interval=1, max_per_key=3)
    ep = _episodes([[1.5, 1.5, 1.5]], [[0, 0, 0]])
    for _ in range(5):
        _update(learner, ep)
    _update(learner, _episodes([[5.0, 5.0, 5.0]], [[0, 0, 0]]))
    assert [learner.pool.meta[k - 1]["update"] for k in learner.memory[1]] == [3, 4, 5]
    assert [learner.pool.meta[k - 1]["update"] for k in learner.memory[5]] == [6]
    assert len(learner.pool) == 4 and learner.retired == []


def test_rpm_draws_keys_uniformly_not_by_snapshot_count():
    g = torch.Generator().manual_seed(0)
    memory = [[1], [2, 3, 4, 5, 6, 7, 8, 9, 10]]  # rank A: one policy, rank B: nine
    keys = rpm.rpm_assignment(20000, 2, memory, 1.0, g)
    assert bool(((keys == LEARNER).sum(-1) == 1).all())  # RPM episode: one learner slot, the rest memory
    co = keys[keys != LEARNER]
    freq = torch.bincount(co, minlength=11).float() / co.numel()
    assert abs(float(freq[1]) - 0.5) < 0.015  # half, not 1/10
    assert torch.allclose(freq[2:], torch.full((9,), 0.5 / 9), atol=0.01)
    assert torch.allclose((keys == LEARNER).float().mean(0), torch.full((2,), 0.5), atol=0.015)
    # The probability of an RPM episode; self-play otherwise or while the memory is empty.
    keys = rpm.rpm_assignment(20000, N, memory, 0.3, g)
    assert abs(float((keys != LEARNER).any(-1).float().mean()) - 0.3) < 0.015
    assert bool((rpm.rpm_assignment(50, N, memory, 0.0, g) == LEARNER).all())
    assert bool((rpm.rpm_assignment(50, N, [[], []], 1.0, g) == LEARNER).all())


def test_rpm_episode_probability_is_annealed_linearly_in_updates():
    assert rpm.rpm_probability(0, 0.0, 0.5, 1000) == 0.0
    assert rpm.rpm_probability(500, 0.0, 0.5, 1000) == 0.25
    assert rpm.rpm_probability(1000, 0.0, 0.5, 1000) == 0.5
    assert rpm.rpm_probability(5000, 0.0, 0.5, 1000) == 0.5
    assert rpm.rpm_probability(3, 0.8, 0.2, 0) == 0.2
    learner = _learner("rpm", rpm_prob_start=0.2, rpm_prob_end=0.6, rpm_anneal_updates=4)
    probs = [learner.rpm_prob()] + [_update(learner)["rpm_prob"] for _ in range(6)]
    assert probs == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])


def test_rpm_state_dict_roundtrip_restores_the_memory_and_the_draws():
    overrides = dict(save_interval=1, max_per_key=2, rpm_prob_start=1.0, return_window=4)
    learner = _learner("rpm", **overrides)
    for r in (0.2, 0.4, 0.6, 1.5, 2.5, 2.7):
        _update(learner, _episodes([[r, r, r]], [[0, 0, 0]]), live_keys=[1])
    restored = _roundtrip(learner, "rpm", **overrides)
    assert restored.memory == learner.memory and restored.retired == learner.retired == [1]
    assert list(restored.recent_returns) == list(learner.recent_returns)
    assert restored.save_update == learner.save_update == 6
    assert restored.pool.ids() == learner.pool.ids()
    for sid, snap in learner.pool.snapshots.items():
        assert all(torch.equal(t, restored.pool.snapshots[sid][name]) for name, t in snap.items())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(learner.assign(64, N, g1), restored.assign(64, N, g2))
    for lr in (learner, restored):
        _update(lr)  # no episode: both rank by the restored window
    assert restored.memory == learner.memory


# Training runs ----------------------------------------------------------------------------------------

SMAX_OVERRIDES = {"num_envs": 4, "rollout_length": 20, "data_chunk_length": 10, "ppo_epochs": 2}
ALGO_OVERRIDES = {
    "selfplay": {"snapshot_interval": 1},
    "rpm": {"save_interval": 1, "rpm_prob_start": 1.0, "rpm_prob_end": 1.0},  # every episode meets the memory
}


def _needs(family: str, scenario: str) -> None:
    reason = envs.unavailable_reason(family, scenario)
    if reason is not None:
        pytest.skip(reason)


def _trainer(algo: str, env_steps: int, run_dir=None, checkpoint_interval: int = 10**9) -> PolicyTrainer:
    return PolicyTrainer(algo, "smax", "3m", seed=3,
                         budget=Budget(env_steps=env_steps, eval_interval=10**9, eval_episodes=2,
                                       checkpoint_interval=checkpoint_interval),
                         overrides={**SMAX_OVERRIDES, **ALGO_OVERRIDES[algo]}, run_dir=run_dir)


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
def test_rpm_on_meltingpot_ranks_snapshots_by_per_capita_return():
    pytest.importorskip("meltingpot")
    _needs("meltingpot", MP_SCENARIO)
    trainer = PolicyTrainer("rpm", "meltingpot", MP_SCENARIO, seed=1,
                            budget=Budget(env_steps=160, eval_interval=10**9, eval_episodes=1),
                            overrides={"num_envs": 2, "rollout_length": 20, "data_chunk_length": 10, "ppo_epochs": 1,
                                       "eval_num_envs": 1, "save_interval": 1, "rpm_prob_start": 1.0,
                                       "rpm_prob_end": 1.0, "psi": 0.5},
                            env_options={"max_episode_frames": 30, "envs_per_worker": 2})
    learner = trainer.learner
    returns: list[float] = []
    after = learner.after_update

    def recording(rollout, episodes, generator):
        if episodes.count:
            returns.extend(episodes.per_capita(LEARNER).tolist())
        return after(rollout, episodes, generator)

    learner.after_update = recording
    rows = trainer.run()
    assert learner.updates == 4 and returns  # episodes of 30 frames ended during 80 steps per copy
    # Saves before any episode ended are skipped; later ones are ranked by the window's mean.
    saved = sum(len(v) for v in learner.memory.values())
    assert 1 <= saved <= 4
    expected = rpm.rank_key(sum(returns) / len(returns), 0.5)
    assert expected in learner.memory
    assert rows[-1]["learner_fraction"] < 1.0
