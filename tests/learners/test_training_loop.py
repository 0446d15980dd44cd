"""The episode runner and the training loop: episode assembly, evaluation, checkpoints, exact resume."""

from pathlib import Path

import pytest
import torch

import envs
from marl.value.controller import AgentController
from marl.value.networks import RecurrentAgent, agent_input_dim
from marl.value.runner import EpisodeRunner, evaluate_greedy
from marl.value.trainer import ValueTrainer
from marl.trainer import CHECKPOINT, METRICS, Budget, train_run


class RecordingEnv:
    """Wraps a real env and records, per copy, what the agents saw and did at every step."""

    def __init__(self, env):
        self.env, self.spec, self.device = env, env.spec, env.device
        self.log: list[dict] = []

    def reset(self, seed=None):
        self.out = self.env.reset(seed=seed)
        return self.out

    def step(self, actions):
        before = self.out
        self.out = self.env.step(actions)
        self.log.append(
            {
                "obs": before.obs.clone(),
                "avail": before.avail_actions.clone(),
                "actions": actions.clone(),
                "reward": self.out.reward[:, 0].clone(),
                "done": self.out.done.clone(),
                "terminated": self.out.terminated.clone(),
                "final_obs": self.out.final_obs.clone(),
            }
        )
        return self.out


def _controller(spec):
    torch.manual_seed(0)
    in_dim = agent_input_dim(spec.obs_shape[0], spec.n_agents, spec.n_actions)
    return AgentController(RecurrentAgent(in_dim, spec.n_actions, 16), spec.n_agents, spec.n_actions)


def test_runner_assembles_exactly_the_episodes_that_were_played():
    env = RecordingEnv(envs.make_env("predator_prey", "stag_hunt_small", num_envs=3, seed=5, episode_limit=7))
    runner = EpisodeRunner(env, _controller(env.spec), torch.Generator().manual_seed(1))
    runner.start(seed=5)
    got = runner.collect(min_episodes=6, epsilon=lambda t: 0.5, t_env=0)
    assert got.count >= 6 and got.env_steps == 3 * len(env.log)

    # Rebuild each copy's episodes from the log, in completion order.
    expected, current = [], [[] for _ in range(3)]
    for step in env.log:
        for b in range(3):
            current[b].append({k: v[b] for k, v in step.items()})
        for b in torch.nonzero(step["done"]).flatten().tolist():
            expected.append(current[b])
            current[b] = []
    assert len(expected) == got.count
    for i, episode in enumerate(expected):
        length = len(episode)
        assert got.lengths[i].item() == length
        assert got.data["filled"][i].sum().item() == length
        for t, step in enumerate(episode):
            assert torch.equal(got.data["obs"][i, t], step["obs"])
            assert torch.equal(got.data["avail_actions"][i, t], step["avail"])
            assert torch.equal(got.data["actions"][i, t], step["actions"])
            assert got.data["reward"][i, t].item() == step["reward"].item()
            assert got.data["terminated"][i, t].item() == step["terminated"].item()
        # the observation after the last step is the episode's final observation
        assert torch.equal(got.data["obs"][i, length], episode[-1]["final_obs"])
        assert got.returns[i].item() == pytest.approx(sum(s["reward"].item() for s in episode))


def test_cut_hands_out_in_flight_prefixes_as_truncated():
    env = envs.make_env("predator_prey", "stag_hunt_small", num_envs=2, seed=0)
    runner = EpisodeRunner(env, _controller(env.spec), torch.Generator().manual_seed(0))
    runner.start(seed=0)
    for _ in range(3):
        assert runner.step(epsilon=1.0) is None  # episodes are 50 steps long
    cut = runner.cut()
    assert cut.count == 2 and cut.lengths.tolist() == [3, 3]
    assert not cut.data["terminated"].any() and not cut.won.any()
    assert runner.cut().count == 0  # nothing left in flight


def test_evaluate_greedy_plays_one_episode_per_copy():
    env = envs.make_env("predator_prey", "stag_hunt_small", num_envs=5, seed=0, episode_limit=9)
    result = evaluate_greedy(env, _controller(env.spec), seed=3)
    assert result.episodes == 5 and 1 <= result.length_mean <= 9 and result.win_rate == 0.0
    again = evaluate_greedy(env, _controller(env.spec), seed=3)
    assert again == result  # greedy + same seed -> same episodes


SMALL = {"num_envs": 4, "batch_size": 8, "buffer_size": 64, "epsilon_anneal_time": 2000, "target_update_interval": 20}


def _comparable(rows):
    """Rows without wall-clock columns, NaN (no data yet) as None so that rows compare equal."""
    return [
        {k: (None if v != v else v) for k, v in r.items() if k not in ("wall_time", "env_steps_per_s")} for r in rows
    ]


@pytest.mark.parametrize("algorithm", ["qmix", "ddn"])  # DDN also draws from torch's global RNG
def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path, algorithm: str):
    budget = Budget(env_steps=3000, eval_interval=500, eval_episodes=4, checkpoint_interval=1000)
    args = (algorithm, "predator_prey", "stag_hunt_small", 7, budget)
    reference = train_run(*args, overrides=SMALL, run_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_after_first_checkpoint(t_env, total, row):
        if t_env > 1700:
            raise Killed

    with pytest.raises(Killed):
        train_run(*args, overrides=SMALL, run_dir=tmp_path / "b", progress=kill_after_first_checkpoint)
    assert (tmp_path / "b" / CHECKPOINT).exists()
    resumed_trainer = ValueTrainer(*args, overrides=SMALL, run_dir=tmp_path / "b")
    assert resumed_trainer.resumed and 1000 <= resumed_trainer.t_env < 1700
    resumed = resumed_trainer.run()

    assert _comparable(resumed) == _comparable(reference)
    assert reference[-1]["updates"] > 0
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)["learner"]["modules"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["learner"]["modules"]
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert (tmp_path / "b" / METRICS).read_text().count("\n") == len(reference) + 1


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path):
    budget = Budget(env_steps=400, eval_interval=400, eval_episodes=2, checkpoint_interval=200)
    train_run("qmix", "predator_prey", "stag_hunt_small", 0, budget, overrides=SMALL, run_dir=tmp_path)
    with pytest.raises(RuntimeError, match="different configuration"):
        train_run(
            "qmix", "predator_prey", "stag_hunt_small", 0, budget, overrides={**SMALL, "lr": 0.1}, run_dir=tmp_path
        )


def test_metrics_rows_follow_the_evaluation_contract():
    budget = Budget(env_steps=2000, eval_interval=500, eval_episodes=3, checkpoint_interval=10**9)
    rows = train_run("vdn", "predator_prey", "stag_hunt_small", 0, budget, overrides=SMALL)
    steps = [r["env_steps"] for r in rows]
    assert steps[0] == 0 and steps[-1] >= 2000 and steps == sorted(steps)
    # one evaluation per crossed interval
    assert all(b - a < 500 + 4 * 50 for a, b in zip(steps, steps[1:]))
    assert all(r["test_episodes"] == 3 for r in rows)
    assert rows[-1]["epsilon"] == pytest.approx(0.05)
