"""What every training run shares, whichever learner kind: the budget, the evaluate / checkpoint /
train loop, metric rows, exact resume, provenance.

Contracts (docs/evaluation.md and docs/run-store.md):

* env steps = joint transitions summed over the parallel environments;
* evaluation every ``eval_interval`` env steps (and at step 0 and at the end) on a separate test
  environment seeded from (run seed, 1), each evaluation from (run seed, 4, evaluation index); a
  metric row holds the evaluation's numbers and the means of the training statistics gathered
  since the previous row (the "window");
* a checkpoint every ``checkpoint_interval`` env steps and at the end: learner, RNG states,
  counters, window and rows, plus what the subclass adds (the replay buffer). At each checkpoint the
  training environments are re-seeded from (run seed, 3, env steps) and start new episodes, in
  interrupted and uninterrupted runs alike, so a resumed run on a deterministic environment equals
  the uninterrupted one. A kill loses at most the work since the last checkpoint.

Subclasses (marl/value/trainer.py for value learners, marl/policy/trainer.py for policy learners) provide the
training iteration, the evaluation and the collection start.
"""

from __future__ import annotations

import importlib
import platform
import time
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

import envs
from marl.allocator import retain_freed_memory
from marl.budget import Budget
from marl.registry import get_algorithm
from marl.run_io import atomic_torch_save, atomic_write_csv, atomic_write_json

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
PROVENANCE = "provenance.json"

ProgressFn = Callable[[int, int, Mapping[str, Any] | None], None]


# The trainer of each learner kind (marl/registry.py's ``KIND``), imported when a run needs it.
TRAINERS: dict[str, str] = {"value": "marl.value.trainer:ValueTrainer", "policy": "marl.policy.trainer:PolicyTrainer"}


def train_run(
    algorithm: str,
    family: str,
    scenario: str,
    seed: int,
    budget: Budget,
    overrides: Mapping[str, Any] | None = None,
    env_options: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    provenance_extra: Mapping[str, Any] | None = None,
    snapshots: tuple[float, ...] = (),
) -> list[dict[str, Any]]:
    """Train one run to its budget with its kind's trainer (resuming from ``run_dir``'s checkpoint if
    there is one) and return its metric rows (one per evaluation). ``progress(t_env, total,
    row_or_None)`` is called after every collection round and every evaluation; raising from it
    stops the run (the last checkpoint stays valid). ``provenance_extra`` is merged into
    provenance.json. Policy learners also write ``policy.pt`` at the end and the policy at each
    fraction of ``snapshots`` of the budget (``policy_at_<fraction>.pt``)."""
    kind = get_algorithm(algorithm).kind
    if kind not in TRAINERS:
        raise NotImplementedError(f"algorithm {algorithm!r} is of kind {kind!r}, which has no trainer")
    module, _, name = TRAINERS[kind].partition(":")
    trainer = getattr(importlib.import_module(module), name)(
        algorithm, family, scenario, seed, budget, overrides, env_options, run_dir, device, progress, provenance_extra
    )
    if snapshots:
        if kind != "policy":
            raise ValueError(f"snapshots are saved by policy learners only, not by {algorithm!r} ({kind})")
        trainer.snapshots = tuple(float(f) for f in snapshots)
    return trainer.run()


def derive_seed(*parts: int) -> int:
    """A reproducible 31-bit seed from integers (run seed, purpose, counter ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Trainer(ABC):
    """Owns the envs, the learner and the counters of one run; ``run()`` trains to the budget."""

    def __init__(
        self,
        algorithm: str,
        family: str,
        scenario: str,
        seed: int,
        budget: Budget,
        overrides: Mapping[str, Any] | None = None,
        env_options: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
        device: str = "cpu",
        progress: ProgressFn | None = None,
        provenance_extra: Mapping[str, Any] | None = None,
    ):
        retain_freed_memory()  # updates reuse freed pages instead of page-faulting (marl/allocator.py)
        self.provenance_extra = dict(provenance_extra or {})
        self.algo = get_algorithm(algorithm)
        self.cfg = self.algo.make_config(overrides, scenario=scenario)
        self.family, self.scenario, self.seed, self.budget = family, scenario, seed, budget
        self.env_options = dict(env_options or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(device)
        self.progress = progress

        torch.manual_seed(seed)  # network initialisation
        self.env = envs.make_env(
            family, scenario, num_envs=self.cfg.num_envs, seed=seed, device=device, **self.env_options
        )
        self.test_env = envs.make_env(
            family,
            scenario,
            num_envs=self.test_num_envs(),
            seed=derive_seed(seed, 1),
            device=device,
            **self.env_options,
        )
        self.learner = self.algo.make_learner(self.cfg, self.env.spec, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(seed, 2))

        self.t_env = 0
        self.episode = 0
        self.n_evals = 0
        self.next_eval = 0
        self.next_checkpoint = budget.checkpoint_interval
        self.wall_time = 0.0
        self.rows: list[dict[str, Any]] = []
        self._window: dict[str, list[float]] = {}
        self.setup()
        self.resumed = self._try_resume()
        self.after_resume()

    # What a learner kind provides -------------------------------------------------------------

    def test_num_envs(self) -> int:
        return self.budget.eval_episodes

    def setup(self) -> None:
        """Build the collection machinery (runner, replay ...) before a checkpoint is loaded."""

    @abstractmethod
    def after_resume(self) -> None:
        """Start collecting (reset the training environments)."""

    @abstractmethod
    def iteration(self) -> None:
        """Collect and learn once; advance ``t_env`` and ``episode``; add statistics to the window."""

    @abstractmethod
    def evaluation_metrics(self) -> dict[str, Any]:
        """Evaluate now (seed from :meth:`evaluation_seed`); the test columns of a metric row."""

    def window_metrics(self) -> dict[str, Any]:
        """The training columns of a metric row (default: the mean of every window statistic)."""
        return {key: self.window_mean(key) for key in sorted(self._window)}

    def before_checkpoint(self) -> None:
        """Work at a periodic checkpoint before saving (value learners store in-flight episodes)."""

    def restart_collection(self) -> None:
        self.after_resume()

    def finish(self) -> None:
        """After the final checkpoint (policy learners save their policy artifact)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def load_checkpoint_extra(self, state: dict[str, Any]) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {
            "t_env": self.t_env,
            "episode": self.episode,
            "n_evals": self.n_evals,
            "next_eval": self.next_eval,
            "next_checkpoint": self.next_checkpoint,
            "wall_time": self.wall_time,
        }

    # The loop -----------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        start = time.perf_counter() - self.wall_time
        try:
            while self.t_env < self.budget.env_steps:
                if self.t_env >= self.next_eval:
                    self._evaluate(time.perf_counter() - start)
                if self.t_env >= self.next_checkpoint:
                    self.wall_time = time.perf_counter() - start
                    self._checkpoint_and_restart()
                self.iteration()
                if self.progress is not None:
                    self.progress(self.t_env, self.budget.env_steps, None)
            if not self.rows or self.rows[-1]["env_steps"] != self.t_env:
                self._evaluate(time.perf_counter() - start)
            self.wall_time = time.perf_counter() - start
            if self.run_dir is not None:
                self._save_checkpoint()
                self.finish()
        finally:
            self.close()
        return self.rows

    def close(self) -> None:
        self.env.close()
        self.test_env.close()

    def add_stat(self, key: str, values: list[float]) -> None:
        self._window.setdefault(key, []).extend(values)

    def window_mean(self, key: str) -> float:
        values = self._window.get(key, [])
        return float(np.mean(values)) if values else float("nan")

    def evaluation_seed(self) -> int:
        return derive_seed(self.seed, 4, self.n_evals)

    def _evaluate(self, wall_time: float) -> None:
        test = self.evaluation_metrics()
        prev = self.rows[-1] if self.rows else {"env_steps": 0, "wall_time": 0.0}
        dt = max(wall_time - prev["wall_time"], 1e-9)
        row = {
            "env_steps": self.t_env,
            "episodes": self.episode,
            "updates": self.learner.updates,
            "wall_time": round(wall_time, 3),
            **test,
            **self.window_metrics(),
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

    # Checkpoints ---------------------------------------------------------------------------------

    def _checkpoint_and_restart(self) -> None:
        self.before_checkpoint()
        if self.run_dir is not None:
            self._save_checkpoint()
        self.next_checkpoint += self.budget.checkpoint_interval
        self.restart_collection()

    def collection_seed(self) -> int:
        return derive_seed(self.seed, 3, self.t_env)

    def _save_checkpoint(self) -> None:
        assert self.run_dir is not None
        state = {
            "version": 1,
            "kind": self.algo.kind,
            "algorithm": self.algo.name,
            "config": asdict(self.cfg),
            "learner": self.learner.state_dict(),
            "generator": self.generator.get_state(),
            # Learners may draw from torch's global generator too (e.g. DDN's IDM sample mask).
            "torch_rng": torch.get_rng_state(),
            "counters": self.counters(),
            "window": self._window,
            "rows": self.rows,
            **self.checkpoint_extra(),
        }
        atomic_torch_save(self.run_dir / CHECKPOINT, state)
        atomic_write_json(self.run_dir / PROVENANCE, self.provenance())

    def _try_resume(self) -> bool:
        if self.run_dir is None or not (self.run_dir / CHECKPOINT).exists():
            return False
        state = torch.load(self.run_dir / CHECKPOINT, map_location=self.device, weights_only=False)
        if state.get("algorithm") != self.algo.name or state.get("config") != asdict(self.cfg):
            raise RuntimeError(
                f"{self.run_dir / CHECKPOINT} belongs to a different configuration; "
                "remove the run directory to start this run afresh"
            )
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self._window = state["window"]
        self.rows = state["rows"]
        self.load_checkpoint_extra(state)
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
