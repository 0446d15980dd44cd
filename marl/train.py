"""The training loop of the value-decomposition learners: collect -> replay -> update -> evaluate.

One code path for every learner (QMIX, VDN, OW/CW-WQMIX, DDN) and every family (SMAX, SMAC,
Predator-Prey, matrix games). Evaluation and checkpoints follow the contracts of DESIGN.md:

* env steps = joint transitions summed over the parallel environments;
* greedy test every ``eval_interval`` env steps (and at step 0 and at the end), ``eval_episodes``
  episodes, one per copy of a separate test environment seeded from (run seed, evaluation index);
* a checkpoint every ``checkpoint_interval`` env steps and at the end holds networks, targets,
  optimizer, counters, the RNG state, the replay buffer and the metric rows, so a resumed run is
  exactly the run that was never interrupted. To make that possible without snapshotting the
  environments, at every checkpoint the in-flight episode prefixes are stored in the replay as
  truncated episodes (bootstrapped from their latest observation) and the training environments
  are re-seeded from (run seed, env steps); interrupted and uninterrupted runs do the same.
  A kill loses at most the work since the last checkpoint.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

import envs
from marl.buffer import EpisodeReplayBuffer
from marl.controller import LinearSchedule
from marl.registry import get_algorithm
from marl.run_io import atomic_torch_save, atomic_write_csv, atomic_write_json
from marl.runner import EpisodeRunner, evaluate_greedy

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
PROVENANCE = "provenance.json"
STANDARD_WINDOW = ("return", "won", "loss", "td_error_abs", "q_taken_mean", "grad_norm")


@dataclass
class Budget:
    env_steps: int
    eval_interval: int = 10_000
    eval_episodes: int = 32
    checkpoint_interval: int = 100_000


def derive_seed(*parts: int) -> int:
    """A reproducible 31-bit seed from integers (run seed, purpose, counter ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


ProgressFn = Callable[[int, int, Mapping[str, Any] | None], None]


class ValueTrainer:
    """Owns env, learner, replay and counters of one run; ``run()`` trains to the budget."""

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
        self.test_env = envs.make_env(family, scenario, num_envs=budget.eval_episodes, seed=derive_seed(seed, 1),
                                      device=device, **self.env_options)
        self.learner = self.algo.make_learner(self.cfg, self.env.spec, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(seed, 2))
        self.runner = EpisodeRunner(self.env, self.learner.controller, self.generator, self.device)
        self.buffer = EpisodeReplayBuffer(self.runner.layout, self.cfg.buffer_size, self.device)
        self.epsilon = LinearSchedule(self.cfg.epsilon_start, self.cfg.epsilon_finish, self.cfg.epsilon_anneal_time)

        self.t_env = 0
        self.episode = 0
        self.pending_episodes = 0
        self.n_evals = 0
        self.next_eval = 0
        self.next_checkpoint = budget.checkpoint_interval
        self.wall_time = 0.0
        self.rows: list[dict[str, Any]] = []
        self._window: dict[str, list[float]] = {key: [] for key in STANDARD_WINDOW}
        self.resumed = self._try_resume()
        self.runner.start(derive_seed(seed, 3, self.t_env))

    # ---------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        start = time.perf_counter() - self.wall_time
        try:
            while self.t_env < self.budget.env_steps:
                if self.t_env >= self.next_eval:
                    self._evaluate(time.perf_counter() - start)
                if self.t_env >= self.next_checkpoint:
                    self.wall_time = time.perf_counter() - start
                    self._checkpoint_and_reseed()
                self._train_round()
            if not self.rows or self.rows[-1]["env_steps"] != self.t_env:
                self._evaluate(time.perf_counter() - start)
            self.wall_time = time.perf_counter() - start
            if self.run_dir is not None:
                self._save_checkpoint()
        finally:
            self.close()
        return self.rows

    def close(self) -> None:
        self.env.close()
        self.test_env.close()

    def _train_round(self) -> None:
        episodes = self.runner.collect(self.cfg.num_envs, self.epsilon, self.t_env)
        self.t_env += episodes.env_steps
        self._store(episodes)
        self._window["return"].extend(episodes.returns.tolist())
        self._window["won"].extend(episodes.won.float().tolist())
        # PyMARL trains once per runner batch of `num_envs` episodes.
        while self.pending_episodes >= self.cfg.num_envs:
            self.pending_episodes -= self.cfg.num_envs
            if not self.buffer.can_sample(self.cfg.batch_size):
                continue
            for _ in range(self.cfg.updates_per_round):
                batch = self.buffer.sample(self.cfg.batch_size, self.generator)
                stats = self.learner.train_step(batch, self.episode)
                for key in ("loss", "td_error_abs", "q_taken_mean", "grad_norm"):
                    self._window[key].append(stats.get(key, float("nan")))
                # The learner's own statistics too (DDN: intrinsic reward, distillation losses ...).
                for key, value in stats.items():
                    if key not in STANDARD_WINDOW and isinstance(value, (int, float)):
                        self._window.setdefault(key, []).append(float(value))
        if self.progress is not None:
            self.progress(self.t_env, self.budget.env_steps, None)

    def _store(self, episodes) -> None:
        self.buffer.insert(episodes.data, episodes.lengths)
        self.episode += episodes.count
        self.pending_episodes += episodes.count

    def _evaluate(self, wall_time: float) -> None:
        result = evaluate_greedy(self.test_env, self.learner.controller, derive_seed(self.seed, 4, self.n_evals),
                                 self.device)
        prev = self.rows[-1] if self.rows else {"env_steps": 0, "wall_time": 0.0}
        dt = max(wall_time - prev["wall_time"], 1e-9)

        def mean(key: str) -> float:
            values = self._window[key]
            return float(np.mean(values)) if values else float("nan")

        row = {
            "env_steps": self.t_env,
            "episodes": self.episode,
            "updates": self.learner.updates,
            "wall_time": round(wall_time, 3),
            "test_win_rate": result.win_rate,
            "test_return_mean": result.return_mean,
            "test_return_std": result.return_std,
            "test_length_mean": result.length_mean,
            "test_episodes": result.episodes,
            "train_return_mean": mean("return"),
            "train_win_rate": mean("won"),
            "epsilon": self.epsilon(self.t_env),
            "loss": mean("loss"),
            "td_error_abs": mean("td_error_abs"),
            "q_taken_mean": mean("q_taken_mean"),
            "grad_norm": mean("grad_norm"),
            **{key: mean(key) for key in sorted(self._window) if key not in STANDARD_WINDOW},
            "env_steps_per_s": round((self.t_env - prev["env_steps"]) / dt, 1),
        }
        self.rows.append(row)
        for values in self._window.values():
            values.clear()
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
        self._store(self.runner.cut())
        if self.run_dir is not None:
            self._save_checkpoint()
        self.next_checkpoint += self.budget.checkpoint_interval
        self.runner.start(derive_seed(self.seed, 3, self.t_env))

    def _save_checkpoint(self) -> None:
        assert self.run_dir is not None
        state = {
            "version": 1,
            "algorithm": self.algo.name,
            "config": asdict(self.cfg),
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            # Learners may draw from torch's global generator too (e.g. DDN's IDM sample mask).
            "torch_rng": torch.get_rng_state(),
            "counters": {
                "t_env": self.t_env, "episode": self.episode, "pending_episodes": self.pending_episodes,
                "n_evals": self.n_evals, "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint,
                "wall_time": self.wall_time,
            },
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
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self._window = state["window"]
        self.rows = state["rows"]
        # Metric rows written after the checkpoint belong to work that is redone now.
        atomic_write_csv(self.run_dir / METRICS, self.rows)
        return True

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
              run_dir: str | Path | None = None, device: str = "cpu",
              progress: ProgressFn | None = None,
              provenance_extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train one run to its budget (resuming from ``run_dir``'s checkpoint if there is one) and
    return its metric rows (one per evaluation). ``progress(t_env, total, row_or_None)`` is called
    after every collection round and every evaluation; raising from it stops the run (the last
    checkpoint stays valid). ``provenance_extra`` is merged into provenance.json."""
    trainer = ValueTrainer(algorithm, family, scenario, seed, budget, overrides, env_options, run_dir, device,
                           progress, provenance_extra)
    return trainer.run()
