"""Build suite directories in the run-store layout from synthetic metrics (report tests test the
report, not learning). Each run's curve rises linearly to a chosen final level, so every table cell
can be checked against a hand-computed median."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marl.registry import get_algorithm
from marl.run_io import atomic_write_csv, atomic_write_json

BUDGET = {"env_steps": 40_000, "eval_interval": 10_000, "eval_episodes": 32, "checkpoint_interval": 20_000}


@dataclass
class FakeRun:
    family: str
    scenario: str
    label: str
    seed: int
    final: float | None  # the level of the last three evaluations; None: no metrics yet
    group: str = "main"
    algorithm: str | None = None
    state: str = "done"
    error: str | None = None
    paper: str = "ddn"
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the algorithm's config
    n_evals: int = 5
    # Policy runs (BiDist suites): the focal per-capita return of crossplay.json against the held-out
    # population (None: no crossplay.json) and on Melting Pot scenarios with bots ({scenario: value}).
    crossplay: float | None = None
    bots: dict[str, float] = field(default_factory=dict)
    crossplay_error: str | None = None  # write a failed crossplay.json with this error
    bots_unavailable: list[str] = field(default_factory=list)  # Melting Pot scenarios whose bots are missing
    env_steps: int = BUDGET["env_steps"]  # the run's budget (its evaluations stay on BUDGET's grid)
    # Co-player kinds (format 2): the focal per-capita return per kind (round_robin, heldout, random,
    # self_play); the score (the headline) is the mean over the unseen kinds, as suites/crossplay_phase.py writes.
    kinds: dict[str, float] = field(default_factory=dict)
    unplayed: int = 0  # round-robin episodes skipped: their co-player had not finished (format 2)

    def spec(self, suite: str) -> dict[str, Any]:
        content = {
            "suite": suite,
            "paper": self.paper,
            "family": self.family,
            "scenario": self.scenario,
            "env_options": {},
            "algorithm": self.algorithm
            or self.label.split("_mu_")[0].split("_raw")[0].split("_distill")[0].split("_no_idm")[0],
            "label": self.label,
            "group": self.group,
            "overrides": {},
            "seed": self.seed,
            "budget": {**BUDGET, "env_steps": self.env_steps},
        }
        content["id"] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
        return content


def metric_rows(family: str, final: float, n_evals: int) -> list[dict[str, Any]]:
    """Evaluations at 0, ~10k, ~20k, ...: a ramp to ``final`` at the third-last evaluation, then flat,
    so the mean of the last three evaluations is exactly ``final``."""
    rate = family in ("smac", "smax")
    rows = []
    for i in range(n_evals):
        level = final * min(1.0, i / max(n_evals - 3, 1))
        rows.append(
            {
                "env_steps": i * BUDGET["eval_interval"] + (37 if i else 0),
                "episodes": 10 * i,
                "updates": 5 * i,
                "wall_time": 1.5 * i,
                "test_win_rate": level if rate else 0.0,
                "test_return_mean": level if not rate else 10 * level,
                "test_return_std": 0.1,
                "test_length_mean": 40.0,
                "test_episodes": 32,
                "train_return_mean": level,
                "train_win_rate": level if rate else 0.0,
                "epsilon": 0.05,
                "loss": 0.1,
                "td_error_abs": 0.1,
                "q_taken_mean": 1.0,
                "grad_norm": 1.0,
                "env_steps_per_s": 1000.0,
            }
        )
    return rows


def policy_metric_rows(final: float, n_evals: int) -> list[dict[str, Any]]:
    """metrics.csv of a policy learner (marl/policy/trainer.py): self-play test return, PPO statistics,
    no win rate on Melting Pot."""
    rows = []
    for i in range(n_evals):
        level = final * min(1.0, i / max(n_evals - 3, 1))
        rows.append(
            {
                "env_steps": i * BUDGET["eval_interval"] + (37 if i else 0),
                "episodes": 4 * i,
                "updates": 2 * i,
                "wall_time": 2.0 * i,
                "test_return_mean": level,
                "test_return_std": 0.2,
                "test_length_mean": 300.0,
                "test_episodes": 4,
                "actor_grad_norm": 0.5,
                "approx_kl": 0.01,
                "clip_frac": 0.1,
                "critic_grad_norm": 1.0,
                "entropy": 2.0,
                "policy_loss": -0.01,
                "train_return_mean": level,
                "value_loss": 0.3,
                "env_steps_per_s": 150.0,
            }
        )
    return rows


SUITE_POPULATION = "suite-trained held-out population (other seeds / algorithms, never seen in training)"
BOT_POPULATION = "DeepMind's Melting Pot scenario bots (background population of the asset bundle)"


def crossplay_record(run: FakeRun, members: list[dict[str, Any]]) -> dict[str, Any]:
    """A crossplay.json as suites/crossplay_phase.py writes it."""
    evaluations = []
    if run.crossplay is not None:
        evaluations.append(
            {
                "kind": "heldout_population",
                "scenario": run.scenario,
                "state": "done",
                "focal_per_capita_return": run.crossplay,
                "population_kind": SUITE_POPULATION,
                "population": members,
                "episodes": 8,
                "n_focal": 1,
            }
        )
    for scenario, value in run.bots.items():
        evaluations.append(
            {
                "kind": "meltingpot_scenario",
                "scenario": scenario,
                "state": "done",
                "focal_per_capita_return": value,
                "population_kind": BOT_POPULATION,
                "episodes": 8,
                "n_focal": 1,
            }
        )
    for scenario in run.bots_unavailable:
        evaluations.append(
            {
                "kind": "meltingpot_scenario",
                "scenario": scenario,
                "state": "unavailable",
                "reason": f"Melting Pot scenario {scenario!r} needs the background bots' SavedModels",
            }
        )
    if run.kinds:
        return coplayer_record(run, members, evaluations)
    return {
        "format": 1,
        "state": "failed" if run.crossplay_error else "done",
        "error": run.crossplay_error,
        "population": members,
        "population_expected": len(members),
        "focal_per_capita_return": run.crossplay,
        "population_kind": SUITE_POPULATION if run.crossplay is not None else None,
        "evaluations": [] if run.crossplay_error else evaluations,
    }


KIND_POPULATIONS = {
    "round_robin": "round robin: the other algorithms' final policies",
    "heldout": "held-out runs at several points of their training",
    "random": "uniform-random policy (the floor)",
    "self_play": "self-play: every seat the focal policy",
}
SCORE_POPULATION = "mean over co-player kinds (round robin, held-out checkpoints, uniform random)"


def coplayer_record(run: FakeRun, members: list[dict[str, Any]], bots: list[dict[str, Any]]) -> dict[str, Any]:
    """A format-2 crossplay.json: one evaluation per co-player kind, the score, then the bot scenarios."""
    evaluations = [
        {
            "kind": kind,
            "scenario": run.scenario,
            "state": "done",
            "focal_per_capita_return": value,
            "population_kind": KIND_POPULATIONS[kind],
            "episodes": 4,
            "n_focal": 1,
            "population": members if kind == "heldout" else [],
            "skipped_unavailable": run.unplayed if kind == "round_robin" else 0,
        }
        for kind, value in run.kinds.items()
    ]
    unseen = [v for k, v in run.kinds.items() if k != "self_play"]
    score = sum(unseen) / len(unseen)
    gap = run.kinds["self_play"] - score if "self_play" in run.kinds else None
    evaluations.append(
        {
            "kind": "coplayer_score",
            "scenario": run.scenario,
            "state": "done",
            "focal_per_capita_return": score,
            "generalisation_gap": gap,
            "population_kind": SCORE_POPULATION,
            "population": members,
            "episodes": 12,
            "n_focal": 1,
        }
    )
    return {
        "format": 2,
        "state": "done",
        "error": None,
        "population": members,
        "population_expected": len(members),
        "focal_per_capita_return": score,
        "population_kind": SCORE_POPULATION,
        "per_kind": {k: {"focal_per_capita_return": v, "episodes": 4} for k, v in run.kinds.items()},
        "self_play_return": run.kinds.get("self_play"),
        "generalisation_gap": gap,
        "evaluations": evaluations + bots,
    }


def write_suite(root: Path, name: str, runs: list[FakeRun], manifest: str | None = None) -> Path:
    suite = root / name
    (suite / "runs").mkdir(parents=True)
    if manifest is not None:
        (suite / "manifest.yaml").write_text(manifest)
    for run in runs:
        spec = run.spec(name)
        d = suite / "runs" / spec["id"]
        atomic_write_json(d / "spec.json", spec)
        atomic_write_json(
            d / "status.json",
            {
                "state": run.state,
                "attempts": 1 if run.state != "pending" else 0,
                "error": run.error,
                "started_at": None,
                "finished_at": None,
                "backend": "local",
                "host": "test",
            },
        )
        if run.crossplay is not None or run.bots or run.crossplay_error or run.bots_unavailable or run.kinds:
            held = [r for r in runs if r.group == "heldout" and r.scenario == run.scenario]
            members = [
                {"run_id": r.spec(name)["id"], "algorithm": r.algorithm or r.label, "label": r.label, "seed": r.seed}
                for r in held
            ]
            atomic_write_json(d / "crossplay.json", crossplay_record(run, members))
        if run.final is not None:
            rows = (
                policy_metric_rows(run.final, run.n_evals)
                if run.paper == "bidist"
                else metric_rows(run.family, run.final, run.n_evals)
            )
            atomic_write_csv(d / "metrics.csv", rows)
            config = asdict(get_algorithm(spec["algorithm"]).make_config(run.config, run.scenario))
            atomic_write_json(
                d / "provenance.json",
                {
                    "env": {
                        "family": run.family,
                        "backend": "jaxmarl" if run.family == "smax" else "native",
                        "version": "0.2.0",
                    },
                    "env_spec": {"n_agents": 3},
                    "algorithm": spec["algorithm"],
                    "config": config,
                    "torch": "2.13.0",
                    "device": "cpu",
                    "python": "3.11",
                    "git_commit": "abc1234",
                    "packages": {"torch": "2.13.0", "jaxmarl": "0.2.0"},
                    "image_digest": None,
                },
            )
    return suite
