"""The training loop of the on-policy learners: rollout -> PPO update (+ the method's own work) ->
evaluate; one code path for MAPPO, self-play, RPM, OPRE, RandNet and BiDist on every family.

Contracts (DESIGN.md), as in marl/train.py:

* env steps = joint transitions summed over the parallel copies (T x B per iteration);
* evaluation every ``eval_interval`` env steps (and at step 0 and at the end): the learner's
  test-time actor in *every* slot (self-play), ``eval_episodes`` complete episodes on a separate
  test environment. Rows hold ``test_return_mean`` (per-capita return), ``test_win_rate`` on
  SMAC-like tasks, and the means of the training statistics since the previous row. Generalisation
  to unseen co-players is measured separately, after training (``marl/crossplay.py``);
* a checkpoint every ``checkpoint_interval`` env steps and at the end (networks, optimisers, value
  normalisation, the method's populations, RNG states, counters, metric rows). At each checkpoint
  the training copies are re-seeded and start new episodes, in interrupted and uninterrupted runs
  alike, so a resumed run on a deterministic environment equals the uninterrupted one;
* at the end, ``policy.pt``: the test-time actor as a policy artifact (marl/population.py), the
  member a held-out population is made of.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import envs
from marl.policy_runner import LEARNER, RolloutCollector, play_episodes
from marl.population import POLICY_FILE, save_policy
from marl.registry import get_algorithm
from marl.run_io import atomic_torch_save, atomic_write_csv, atomic_write_json
from marl.train import CHECKPOINT, METRICS, PROVENANCE, Budget, ProgressFn, derive_seed


class SelfPlayPlayers:
    """Evaluation players: one actor in every slot."""

    def __init__(self, actor: torch.nn.Module):
        self.actor = actor

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        return torch.full((n_envs, n_agents), LEARNER, dtype=torch.long)

    def module(self, key: int) -> torch.nn.Module:
        return self.actor


def greedy_eval(cfg: Any, spec: envs.EnvSpec) -> bool:
    if cfg.eval_actions == "auto":
        return bool(spec.has_won)
    if cfg.eval_actions not in ("greedy", "sample"):
        raise ValueError(f"eval_actions must be 'auto', 'greedy' or 'sample', got {cfg.eval_actions!r}")
    return cfg.eval_actions == "greedy"


class PolicyTrainer:
    def __init__(self, algorithm: str, family: str, scenario: str, seed: int, budget: Budget,
                 overrides: Mapping[str, Any] | None = None, env_options: Mapping[str, Any] | None = None,
                 run_dir: str | Path | None = None, device: str = "cpu", progress: ProgressFn | None = None,
                 provenance_extra: Mapping[str, Any] | None = None):
        self.provenance_extra = dict(provenance_extra or {})
        self.algo = get_algorithm(algorithm)
        self.cfg = self.algo.make_config(overrides, scenario=scenario)
        self.family, self.scenario, self.seed, self.budget = family, scenario, seed, budget
        self.env_options = dict(env_options or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(device)
        self.progress = progress

        torch.manual_seed(seed)  # network initialisation
        self.env = envs.make_env(family, scenario, num_envs=self.cfg.num_envs, seed=seed, device=device,
                                 **self.env_options)
        n_test = max(1, min(self.cfg.eval_num_envs, budget.eval_episodes))
        self.test_episodes_per_env = math.ceil(budget.eval_episodes / n_test)
        self.test_env = envs.make_env(family, scenario, num_envs=n_test, seed=derive_seed(seed, 1), device=device,
                                      **self.env_options)
        self.learner = self.algo.make_learner(self.cfg, self.env.spec, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(seed, 2))
        self.collector = RolloutCollector(self.env, self.learner, self.learner.actor, self.learner.critic,
                                          self.generator, self.device)
        self.greedy_eval = greedy_eval(self.cfg, self.env.spec)

        self.t_env = 0
        self.episode = 0
        self.n_evals = 0
        self.next_eval = 0
        self.next_checkpoint = budget.checkpoint_interval
        self.wall_time = 0.0
        self.rows: list[dict[str, Any]] = []
        self._window: dict[str, list[float]] = {}
        self.resumed = self._try_resume()
        if self.t_env < self.next_checkpoint:  # else run() checkpoints and re-seeds first: start once
            self.collector.start(derive_seed(seed, 3, self.t_env))

    def run(self) -> list[dict[str, Any]]:
        start = time.perf_counter() - self.wall_time
        try:
            while self.t_env < self.budget.env_steps:
                if self.t_env >= self.next_eval:
                    self._evaluate(time.perf_counter() - start)
                if self.t_env >= self.next_checkpoint:
                    self.wall_time = time.perf_counter() - start
                    self._checkpoint_and_reseed()
                self._iteration()
            if not self.rows or self.rows[-1]["env_steps"] != self.t_env:
                self._evaluate(time.perf_counter() - start)
            self.wall_time = time.perf_counter() - start
            if self.run_dir is not None:
                self._save_checkpoint()
                self.save_policy(self.run_dir / POLICY_FILE)
        finally:
            self.close()
        return self.rows

    def close(self) -> None:
        self.env.close()
        self.test_env.close()

    def _iteration(self) -> None:
        self.learner.before_rollout(self.generator)
        rollout, episodes = self.collector.collect(self.cfg.rollout_length)
        self.t_env += rollout.env_steps
        self.episode += episodes.count
        stats = self.learner.train_step(rollout, episodes, self.generator)
        if episodes.count:
            per_capita = episodes.per_capita(LEARNER)
            self._add("train_return_mean", per_capita[~per_capita.isnan()].tolist())
            if self.env.spec.has_won:
                self._add("train_win_rate", episodes.won.float().tolist())
        for key, value in stats.items():
            self._add(key, [value])
        if self.progress is not None:
            self.progress(self.t_env, self.budget.env_steps, None)

    def _add(self, key: str, values: list[float]) -> None:
        self._window.setdefault(key, []).extend(values)

    @torch.no_grad()
    def evaluate_selfplay(self, seed: int):
        actor = self.learner.eval_module()
        was_training = actor.training
        actor.eval()
        try:
            return play_episodes(self.test_env, SelfPlayPlayers(actor), self.test_episodes_per_env, seed,
                                 self.greedy_eval, self.device)
        finally:
            actor.train(was_training)

    def _evaluate(self, wall_time: float) -> None:
        episodes = self.evaluate_selfplay(derive_seed(self.seed, 4, self.n_evals))
        per_capita = episodes.returns.mean(-1)
        prev = self.rows[-1] if self.rows else {"env_steps": 0, "wall_time": 0.0}
        dt = max(wall_time - prev["wall_time"], 1e-9)
        row: dict[str, Any] = {
            "env_steps": self.t_env,
            "episodes": self.episode,
            "updates": self.learner.updates,
            "wall_time": round(wall_time, 3),
            "test_return_mean": float(per_capita.mean()),
            "test_return_std": float(per_capita.std(unbiased=False)),
            "test_length_mean": float(episodes.lengths.float().mean()),
            "test_episodes": episodes.count,
        }
        if self.env.spec.has_won:
            row["test_win_rate"] = float(episodes.won.float().mean())
        for key, values in sorted(self._window.items()):
            row[key] = float(np.mean(values)) if values else float("nan")
        row["env_steps_per_s"] = round((self.t_env - prev["env_steps"]) / dt, 1)
        self.rows.append(row)
        self._window = {}
        self.n_evals += 1
        self.next_eval += self.budget.eval_interval
        while self.next_eval <= self.t_env:
            self.next_eval += self.budget.eval_interval
        if self.run_dir is not None:
            atomic_write_csv(self.run_dir / METRICS, self.rows)
        if self.progress is not None:
            self.progress(self.t_env, self.budget.env_steps, row)

    # Checkpoints ---------------------------------------------------------------------------

    def _checkpoint_and_reseed(self) -> None:
        if self.run_dir is not None:
            self._save_checkpoint()
        self.next_checkpoint += self.budget.checkpoint_interval
        self.collector.start(derive_seed(self.seed, 3, self.t_env))

    def _save_checkpoint(self) -> None:
        assert self.run_dir is not None
        state = {
            "version": 1,
            "kind": "policy",
            "algorithm": self.algo.name,
            "config": asdict(self.cfg),
            "learner": self.learner.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "counters": {"t_env": self.t_env, "episode": self.episode, "n_evals": self.n_evals,
                         "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint,
                         "wall_time": self.wall_time},
            "window": self._window,
            "rows": self.rows,
        }
        atomic_torch_save(self.run_dir / CHECKPOINT, state)
        atomic_write_json(self.run_dir / PROVENANCE, self.provenance())

    def _try_resume(self) -> bool:
        if self.run_dir is None or not (self.run_dir / CHECKPOINT).exists():
            return False
        state = torch.load(self.run_dir / CHECKPOINT, map_location=self.device, weights_only=False)
        if state.get("algorithm") != self.algo.name or state.get("config") != asdict(self.cfg):
            raise RuntimeError(f"{self.run_dir / CHECKPOINT} belongs to a different configuration; "
                               "remove the run directory to start this run afresh")
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self._window = state["window"]
        self.rows = state["rows"]
        atomic_write_csv(self.run_dir / METRICS, self.rows)  # rows after the checkpoint are redone
        return True

    def save_policy(self, path: str | Path) -> None:
        save_policy(path, self.algo.name, self.cfg, self.env.spec, self.learner.eval_module(),
                    {"seed": self.seed, "env_steps": self.t_env, **{k: v for k, v in self.provenance_extra.items()
                                                                     if isinstance(v, (str, int, float))}})

    def provenance(self) -> dict[str, Any]:
        return {
            "env": self.env.provenance(),
            "env_spec": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in asdict(self.env.spec).items()},
            "algorithm": self.algo.name,
            "config": asdict(self.cfg),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
            "python": platform.python_version(),
            "machine": platform.machine(),
            **self.provenance_extra,
        }


def train_run(algorithm: str, family: str, scenario: str, seed: int, budget: Budget,
              overrides: Mapping[str, Any] | None = None, env_options: Mapping[str, Any] | None = None,
              run_dir: str | Path | None = None, device: str = "cpu", progress: ProgressFn | None = None,
              provenance_extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train one on-policy run to its budget (resuming from ``run_dir``'s checkpoint) and return its
    metric rows; same contract as marl.train.train_run, plus ``policy.pt`` at the end."""
    return PolicyTrainer(algorithm, family, scenario, seed, budget, overrides, env_options, run_dir, device,
                         progress, provenance_extra).run()
