"""The training loop of the value-decomposition learners: collect -> replay -> update -> evaluate.

One code path for every learner (QMIX, VDN, OW/CW-WQMIX, DDN) and every family (SMAX, SMAC,
Predator-Prey, matrix games). Evaluation and checkpoints follow the contracts of docs/evaluation.md:

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

The loop, metric rows, checkpoints and provenance shared with the policy learners are in
marl/trainer.py; this module is what is particular to replay-based value learning.
"""

from __future__ import annotations

from typing import Any

from marl.value.buffer import EpisodeReplayBuffer
from marl.value.controller import LinearSchedule
from marl.value.runner import EpisodeRunner, evaluate_greedy
from marl.trainer import Trainer

# Window statistics every value learner reports, as named metric columns (others follow, sorted).
STANDARD_WINDOW = ("return", "won", "loss", "td_error_abs", "q_taken_mean", "grad_norm")


class ValueTrainer(Trainer):
    """Collect episodes with epsilon-greedy acting -> replay -> one update per ``num_envs`` episodes."""

    def setup(self) -> None:
        self.runner = EpisodeRunner(self.env, self.learner.behaviour_controller, self.generator, self.device)
        self.buffer = EpisodeReplayBuffer(self.runner.layout, self.cfg.buffer_size, self.device)
        self.epsilon = LinearSchedule(self.cfg.epsilon_start, self.cfg.epsilon_finish, self.cfg.epsilon_anneal_time)
        self.pending_episodes = 0
        self._window = {key: [] for key in STANDARD_WINDOW}

    def after_resume(self) -> None:
        self.runner.start(self.collection_seed())

    def iteration(self) -> None:
        episodes = self.runner.collect(self.cfg.num_envs, self.epsilon, self.t_env)
        self.t_env += episodes.env_steps
        self._store(episodes)
        self.add_stat("return", episodes.returns.tolist())
        self.add_stat("won", episodes.won.float().tolist())
        # PyMARL trains once per runner batch of `num_envs` episodes.
        while self.pending_episodes >= self.cfg.num_envs:
            self.pending_episodes -= self.cfg.num_envs
            if not self.buffer.can_sample(self.cfg.batch_size):
                continue
            for _ in range(self.cfg.updates_per_round):
                batch = self.buffer.sample(self.cfg.batch_size, self.generator)
                stats = self.learner.train_step(batch, self.episode)
                for key in STANDARD_WINDOW[2:]:
                    self.add_stat(key, [stats.get(key, float("nan"))])
                # The learner's own statistics too (DDN: intrinsic reward, distillation losses ...).
                for key, value in stats.items():
                    if key not in STANDARD_WINDOW and isinstance(value, (int, float)):
                        self.add_stat(key, [float(value)])

    def _store(self, episodes) -> None:
        self.buffer.insert(episodes.data, episodes.lengths)
        self.episode += episodes.count
        self.pending_episodes += episodes.count

    def evaluation_metrics(self) -> dict[str, Any]:
        result = evaluate_greedy(self.test_env, self.learner.controller, self.evaluation_seed(), self.device)
        row = {
            "test_win_rate": result.win_rate,
            "test_return_mean": result.return_mean,
            "test_return_std": result.return_std,
            "test_length_mean": result.length_mean,
            "test_episodes": result.episodes,
        }
        # Diagnostic policies (DDN's teacher) on the same test episodes; the training data and the
        # evaluated policy are untouched (the test environment is re-seeded per evaluation).
        for name, controller in self.learner.diagnostic_controllers().items():
            other = evaluate_greedy(self.test_env, controller, self.evaluation_seed(), self.device)
            row.update(
                {
                    f"{name}_test_win_rate": other.win_rate,
                    f"{name}_test_return_mean": other.return_mean,
                    f"{name}_test_length_mean": other.length_mean,
                }
            )
        return row

    def window_metrics(self) -> dict[str, Any]:
        return {
            "train_return_mean": self.window_mean("return"),
            "train_win_rate": self.window_mean("won"),
            "epsilon": self.epsilon(self.t_env),
            **{key: self.window_mean(key) for key in STANDARD_WINDOW[2:]},
            **{key: self.window_mean(key) for key in sorted(self._window) if key not in STANDARD_WINDOW},
        }

    # Checkpoints: the replay buffer, and in-flight episodes stored (truncated) before saving.

    def before_checkpoint(self) -> None:
        self._store(self.runner.cut())

    def counters(self) -> dict[str, Any]:
        return {**super().counters(), "pending_episodes": self.pending_episodes}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_checkpoint_extra(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
