"""The training loop of the on-policy learners: rollout -> PPO update (+ the method's own work) ->
evaluate; one code path for MAPPO, self-play, RPM, OPRE, RandNet and BiDist on every family.

Contracts (docs/evaluation.md; the shared loop is marl/trainer.py):

* env steps = joint transitions summed over the parallel copies (T x B per iteration);
* evaluation every ``eval_interval`` env steps (and at step 0 and at the end): the learner's
  test-time actor in *every* slot (self-play), ``eval_episodes`` complete episodes on a separate
  test environment. Rows hold ``test_return_mean`` (per-capita return), ``test_win_rate`` on
  SMAC-like tasks, and the means of the training statistics since the previous row. Generalisation
  to unseen co-players is measured separately, after training (``marl/policy/crossplay.py``);
* a checkpoint every ``checkpoint_interval`` env steps and at the end (networks, optimisers, value
  normalisation, the method's populations, RNG states, counters, metric rows). At each checkpoint
  the training copies are re-seeded and start new episodes, in interrupted and uninterrupted runs
  alike, so a resumed run on a deterministic environment equals the uninterrupted one;
* at the end, ``policy.pt``: the test-time actor as a policy artifact (marl/policy/population.py), the
  member a held-out population is made of; with ``snapshots`` (fractions of the budget, held-out
  runs), also ``policy_at_<fraction>.pt`` after the first update that reaches that fraction of the
  env-step budget (co-players of diverse skill, as in Fictitious Co-Play). A resumed run re-saves a
  snapshot only when it resumed from before it, so it equals the uninterrupted run's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

import envs
from marl.config import ConfigError
from marl.policy.runner import LEARNER, Episodes, RolloutCollector, SelfPlayPlayers, play_episodes
from marl.policy.population import POLICY_FILE, policy_file, save_policy
from marl.trainer import Trainer


def greedy_eval(cfg: Any, spec: envs.EnvSpec) -> bool:
    if cfg.eval_actions == "auto":
        return bool(spec.has_won)
    if cfg.eval_actions not in ("greedy", "sample"):
        raise ConfigError(f"eval_actions must be 'auto', 'greedy' or 'sample', got {cfg.eval_actions!r}")
    return cfg.eval_actions == "greedy"


class PolicyTrainer(Trainer):
    """Fixed-length rollouts with the learner's players -> PPO update (+ the method's own work)."""

    def test_num_envs(self) -> int:
        return max(1, min(self.cfg.eval_num_envs, self.budget.eval_episodes))

    def setup(self) -> None:
        self.test_episodes_per_env = math.ceil(self.budget.eval_episodes / self.test_env.spec.num_envs)
        self.collector = RolloutCollector(
            self.env,
            self.learner,
            self.learner.actor,
            self.learner.critic,
            self.generator,
            self.device,
            record_all_slots=bool(self.learner.trains_all_slots),
        )
        # Iterations (one PPO update each) until t_env reaches the budget: T x B env steps each.
        steps = self.cfg.rollout_length * self.env.spec.num_envs
        self.learner.set_budget(max(1, math.ceil(self.budget.env_steps / steps)))
        self.greedy_eval = greedy_eval(self.cfg, self.env.spec)

    def after_resume(self) -> None:
        if self.t_env < self.next_checkpoint:  # else run() checkpoints and re-seeds first: start once
            self.collector.start(self.collection_seed())

    def restart_collection(self) -> None:
        self.collector.start(self.collection_seed())

    def iteration(self) -> None:
        self.learner.before_rollout(self.generator)
        rollout, episodes = self.collector.collect(self.cfg.rollout_length)
        before = self.t_env
        self.t_env += rollout.env_steps
        self.episode += episodes.count
        stats = self.learner.train_step(rollout, episodes, self.generator)
        self.save_snapshots(before)
        if episodes.count:
            per_capita = episodes.per_capita(LEARNER)
            self.add_stat("train_return_mean", per_capita[~per_capita.isnan()].tolist())
            if self.env.spec.has_won:
                self.add_stat("train_win_rate", episodes.won.float().tolist())
        for key, value in stats.items():
            self.add_stat(key, [value])

    @torch.no_grad()
    def evaluate_selfplay(self, seed: int) -> Episodes:
        actor = self.learner.eval_module()
        was_training = actor.training
        actor.eval()
        try:
            return play_episodes(
                self.test_env, SelfPlayPlayers(actor), self.test_episodes_per_env, seed, self.greedy_eval, self.device
            )
        finally:
            actor.train(was_training)

    def evaluation_metrics(self) -> dict[str, Any]:
        episodes = self.evaluate_selfplay(self.evaluation_seed())
        per_capita = episodes.returns.mean(-1)
        metrics: dict[str, Any] = {
            "test_return_mean": float(per_capita.mean()),
            "test_return_std": float(per_capita.std(unbiased=False)),
            "test_length_mean": float(episodes.lengths.float().mean()),
            "test_episodes": episodes.count,
        }
        if self.env.spec.has_won:
            metrics["test_win_rate"] = float(episodes.won.float().mean())
        return metrics

    def save_snapshots(self, before: int) -> None:
        """Save the policy at every snapshot fraction whose env-step mark this update crossed."""
        if self.run_dir is None:
            return
        for fraction in getattr(self, "snapshots", ()):
            mark = fraction * self.budget.env_steps
            if fraction < 1.0 and before < mark <= self.t_env:
                self.save_policy(self.run_dir / policy_file(fraction), fraction=fraction)

    def finish(self) -> None:
        assert self.run_dir is not None
        self.save_policy(self.run_dir / POLICY_FILE, fraction=1.0)

    def save_policy(self, path: str | Path, fraction: float = 1.0) -> None:
        save_policy(
            path,
            self.algo.name,
            self.cfg,
            self.env.spec,
            self.learner.eval_module(),
            {
                "seed": self.seed,
                "env_steps": self.t_env,
                "fraction": fraction,
                **{k: v for k, v in self.provenance_extra.items() if isinstance(v, (str, int, float))},
            },
        )
