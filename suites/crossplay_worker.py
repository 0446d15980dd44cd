"""The worker side of the cross-play phase (suites/crossplay_phase.py is the driver side): the
``crossplay`` task of suites/worker.py evaluates one finished focal policy run against the
co-players named in the driver's request, on the common partner schedule (marl/policy/crossplay.py), and
on Melting Pot scenarios with DeepMind's bots, and writes ``crossplay.json`` atomically into the
run dir. It imports nothing of the driver's (orchestrator, backends)."""

from __future__ import annotations

import math
import os
import socket
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from marl.policy.population import POLICY_FILE
from marl.run_io import atomic_write_json
from suites.manifest import content_id
from suites.protocol import EventSink, StopRequested, lock_run_dir
from suites.store import SPEC, now, read_json_file

CROSSPLAY = "crossplay.json"
# The floor row's evaluation dirs, beside runs/: <suite>/floor/<id>/{spec.json, crossplay.json}.
FLOOR_DIR = "floor"
# The partner schedule's batches played so far ({"format", "batches": {key: returns}}),
# written after every batch: a killed evaluation resumes from its last batch, and a re-evaluation
# after a member finished plays only the batches that hold that member (marl/policy/crossplay.py).
BATCHES = "crossplay_batches.json"
BATCHES_FORMAT = 1
FORMAT = 2  # 2: co-player kinds on a common partner schedule (1: one population drawn i.i.d. per episode)
HELDOUT, BOTS, COPLAYERS = "heldout_population", "meltingpot_scenario", "coplayers"
POPULATION_KIND_BOTS = "DeepMind's Melting Pot scenario bots (background population of the asset bundle)"
# Request fields that define the evaluation (their hash decides whether crossplay.json is up to date).
HASHED = (
    "format",
    "focal",
    "focal_algorithm",
    "coplayers",
    "members",
    "population",
    "episodes",
    "n_focal",
    "num_envs",
    "seed",
    "bot_scenarios",
)


def request_hash(request: Mapping[str, Any]) -> str:
    return content_id({k: request.get(k) for k in HASHED})


def evaluate_on_bot_scenario(
    focal_path: Path,
    scenario: str,
    env_options: Mapping[str, Any],
    episodes: int,
    seed: int,
    num_envs: int,
    greedy: bool,
    device: str,
) -> dict[str, Any]:
    """The focal policy in every focal slot of a Melting Pot scenario (DeepMind's bots in the others):
    the scenario's agents are exactly its focal players, so their mean return is the focal per-capita
    return."""
    import envs
    from marl.policy.crossplay import focal_return_summary
    from marl.policy.runner import SelfPlayPlayers, play_episodes
    from marl.policy.population import load_policy

    # max_episode_frames shortens substrates only; a scenario keeps Melting Pot's episode rules.
    options = {k: v for k, v in env_options.items() if k != "max_episode_frames"}
    num_envs = max(1, min(num_envs, episodes))
    env = envs.make_env("meltingpot", scenario, num_envs=num_envs, seed=seed, device=device, **options)
    try:
        focal = load_policy(focal_path, device, expect=env.spec)
        # A scenario's agents are exactly its focal players: the focal policy holds every one.
        eps = play_episodes(env, SelfPlayPlayers(focal.actor), math.ceil(episodes / num_envs), seed, greedy, device)
        n_agents = env.spec.n_agents
    finally:
        env.close()
    return {
        **focal_return_summary(eps.returns.mean(-1)),  # every agent of a scenario is a focal player
        "n_focal": n_agents,
        "actions": "greedy" if greedy else "sampled",
        "population_kind": POPULATION_KIND_BOTS,
    }


def batch_cache_context() -> tuple[dict[str, Any] | None, str]:
    """(what a cached batch's returns depend on beyond its own key, or None; why). Batches are reused
    only from the same commit, package versions and CPU model: anything else may play differently."""
    from suites.provenance import cpu_model, git_info, package_versions

    info = git_info()
    if not info.get("commit"):
        return None, "off: the code's commit is unknown (not a git checkout and no SUITE_GIT_COMMIT)"
    if info.get("dirty"):
        return None, "off: the working tree has uncommitted changes"
    return {"code": info["commit"], "packages": package_versions(), "cpu": cpu_model()}, "on"


def read_batches(run_dir: Path) -> dict[str, list]:
    """The batches a previous evaluation of this run dir stored (empty when none or unreadable)."""
    try:
        data = read_json_file(run_dir / BATCHES)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != BATCHES_FORMAT or not isinstance(data.get("batches"), dict):
        return {}
    return dict(data["batches"])


def _acting(focal_path: Path) -> tuple[bool, int]:
    """(greedy, parallel copies) as the focal run's own test evaluation chose them."""
    import torch

    from marl.policy.trainer import greedy_eval

    blob = torch.load(focal_path, map_location="cpu", weights_only=False)
    cfg, spec = blob.get("config", {}), blob.get("spec", {})
    greedy = greedy_eval(
        SimpleNamespace(eval_actions=cfg.get("eval_actions", "auto")),
        SimpleNamespace(has_won=bool(spec.get("has_won", False))),
    )
    return greedy, int(cfg.get("eval_num_envs", 4))


def execute_crossplay(
    run_dir: Path, sink: EventSink, request: dict[str, Any], threads: int = 1, device: str = "cpu"
) -> tuple[str, str | None]:
    """The ``crossplay`` task of suites/worker.py: evaluate, write crossplay.json, report events."""
    lock_fd = lock_run_dir(run_dir)
    try:
        spec = read_json_file(run_dir / SPEC)
        run_id = spec["id"]
        if request.get("focal") != run_id:
            error = f"cross-play request for run {request.get('focal')!r} sent to run dir {run_id!r}"
            sink.emit({"event": "end", "run": run_id, "state": "failed", "error": error})
            return "failed", error
        sink.emit({"event": "start", "run": run_id, "attempt": 1, "pid": os.getpid()})
        try:
            record = _evaluate(run_dir, spec, sink, request, threads, device)
        except StopRequested:
            sink.emit({"event": "end", "run": run_id, "state": "interrupted", "error": None})
            return "interrupted", None
        except BaseException as exc:  # recorded; the driver decides on retries
            error = f"{type(exc).__name__}: {exc}"
            atomic_write_json(
                run_dir / CROSSPLAY,
                {
                    "format": FORMAT,
                    "state": "failed",
                    "error": error,
                    "traceback": traceback.format_exc(limit=-4),
                    "request": request,
                    "request_hash": request_hash(request),
                    "finished_at": now(),
                    "evaluations": [],
                },
            )
            sink.emit({"event": "end", "run": run_id, "state": "failed", "error": error})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return "failed", error
        atomic_write_json(run_dir / CROSSPLAY, record)
        sink.emit({"event": "end", "run": run_id, "state": record["state"], "error": record["error"]})
        return record["state"], record["error"]
    finally:
        os.close(lock_fd)


def _evaluate(
    run_dir: Path, spec: Mapping[str, Any], sink: EventSink, request: Mapping[str, Any], threads: int, device: str
) -> dict[str, Any]:
    """Every co-player kind on the common partner schedule, then the Melting Pot scenarios with bots.
    ``evaluations`` holds one entry per co-player kind, one for the score (the mean over the unseen
    kinds, with the generalisation gap) and one per bot scenario."""
    import torch

    from marl.policy.crossplay import (
        FLOOR_FOCAL,
        KIND_NAMES,
        SCORE_KIND,
        SCORE_NAME,
        coplayer_score,
        evaluate_schedule,
    )

    torch.set_num_threads(max(1, threads))
    is_floor = spec.get("algorithm") == FLOOR_FOCAL
    # Focal runs live in <suite>/runs/<id>, the floor in <suite>/FLOOR_DIR/<id>; members are runs.
    runs_dir = run_dir.parent.parent / "runs" if is_floor else run_dir.parent
    # Every member with the path of its policy file (None: not available to play).
    members = {
        k: [
            {**m, "path": str(runs_dir / m["run_id"] / m["file"]) if m.get("available") and "run_id" in m else None}
            for m in ms
        ]
        for k, ms in request["members"].items()
    }
    if is_floor:
        # The floor row (suites/crossplay_phase.py): a uniform-random focal player, acting mode of
        # the suite's focal runs (any finished member is one), no bot scenarios.
        focal_path = None
        finished = [m["path"] for ms in members.values() for m in ms if m["path"]]
        greedy = _acting(Path(finished[0]))[0] if finished else False
    else:
        focal_path = run_dir / POLICY_FILE
        if not focal_path.is_file():
            raise FileNotFoundError(f"{focal_path} is missing: the run finished without its policy artifact")
        greedy, _ = _acting(focal_path)
    num_envs = int(request.get("num_envs") or 2)  # the request's, not the focal run's: the same for every method
    targets = [(COPLAYERS, spec["scenario"])] + [(BOTS, name) for name in request["bot_scenarios"]]
    evaluations: list[dict[str, Any]] = []
    by_kind: dict[str, Any] = {}
    batch_cache: dict[str, Any] | None = None
    for i, (kind, scenario) in enumerate(targets):
        if sink.should_stop():
            raise StopRequested
        seed = int(request["seed"]) + i
        try:
            if kind == COPLAYERS:
                context, cache_state = batch_cache_context()
                cache = read_batches(run_dir) if context is not None else None

                def after_batch(cache: dict[str, list] | None = cache) -> None:
                    if cache is not None:
                        atomic_write_json(run_dir / BATCHES, {"format": BATCHES_FORMAT, "batches": cache})
                    if sink.should_stop():
                        raise StopRequested  # between batches: the batches played so far are kept

                result = evaluate_schedule(
                    focal_path,
                    members,
                    spec["family"],
                    spec["scenario"],
                    spec["env_options"],
                    episodes=int(request["episodes"]),
                    seed=seed,
                    num_envs=num_envs,
                    n_focal=request.get("n_focal"),
                    greedy=greedy,
                    exclude_algorithm=request.get("focal_algorithm"),
                    device=device,
                    batch_cache=cache,
                    cache_context=context,
                    on_batch=after_batch,
                )
                batch_cache = {
                    "state": cache_state,
                    "batches_played": result["batches_played"],
                    "batches_reused": result["batches_reused"],
                }
                by_kind = result["kinds"]
                common = {
                    k: result[k]
                    for k in ("n_focal", "n_agents", "num_envs", "schedule_seed", "schedule_length", "actions")
                }
                for name, record in by_kind.items():
                    evaluations.append(
                        {
                            **record,
                            "kind": name,
                            "scenario": scenario,
                            **common,
                            "state": "done" if record["state"] == "done" else "empty",
                        }
                    )
                score, gap = coplayer_score(by_kind)
                evaluations.append(
                    {
                        "kind": SCORE_KIND,
                        "scenario": scenario,
                        "state": "done" if score is not None else "empty",
                        "population_kind": SCORE_NAME,
                        "focal_per_capita_return": score,
                        "generalisation_gap": gap,
                        "population": list(request["population"]),
                        "episodes": sum(r.get("episodes", 0) for k, r in by_kind.items() if k != "self_play"),
                        **common,
                    }
                )
            else:
                result = evaluate_on_bot_scenario(
                    focal_path, scenario, spec["env_options"], int(request["episodes"]), seed, num_envs, greedy, device
                )
                evaluations.append({"kind": kind, "scenario": scenario, "state": "done", **result})
        except StopRequested:
            raise
        except Exception as exc:  # one failing evaluation does not lose the others
            evaluations.append(
                {"kind": kind, "scenario": scenario, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
            )
        sink.emit({"event": "progress", "run": spec["id"], "t": i + 1, "total": len(targets), "row": None})
    for name, reason in (request.get("bot_scenarios_unavailable") or {}).items():
        evaluations.append({"kind": BOTS, "scenario": name, "state": "unavailable", "reason": reason})
    failed = [e for e in evaluations if e["state"] == "failed"]
    headline = next((e for e in evaluations if e["kind"] == SCORE_KIND and e["state"] == "done"), None)
    _, gap = coplayer_score(by_kind)
    return {
        "format": FORMAT,
        "state": "failed" if failed else "done",
        "error": "; ".join(f"{e['scenario']}: {e['error']}" for e in failed) or None,
        "focal_run": spec["id"],
        "request": dict(request),
        "request_hash": request_hash(request),
        "population": list(request["population"]),
        "population_expected": request.get("population_expected"),
        # The headline: the mean over the unseen co-player kinds (round robin, held-out, random).
        "focal_per_capita_return": headline["focal_per_capita_return"] if headline else None,
        "population_kind": headline["population_kind"]
        if headline
        else (POPULATION_KIND_BOTS if any(e["kind"] == BOTS and e["state"] == "done" for e in evaluations) else None),
        # Per co-player kind: the focal per-capita return and its episodes (the report's columns).
        "per_kind": {
            k: {
                "focal_per_capita_return": r.get("focal_per_capita_return"),
                "episodes": r.get("episodes", 0),
                "population_kind": KIND_NAMES[k],
            }
            for k, r in by_kind.items()
        },
        "self_play_return": (by_kind.get("self_play") or {}).get("focal_per_capita_return"),
        "generalisation_gap": gap,
        "evaluations": evaluations,
        # Batches of the partner schedule played now or reused from crossplay_batches.json.
        "batch_cache": batch_cache,
        "host": socket.gethostname(),
        "finished_at": now(),
    }
