"""Cross-play evaluation: a focal policy against a held-out population of co-players.

Melting Pot's protocol (methods.md): the policy under test fills the *focal* slots, a background
population the others; the metric is the focal per-capita return (mean episode return over focal
slots). Where DeepMind's bot scenarios are installed they are the background; where they are not
(as on the development machines), the suite's own held-out population is: policies trained in
separate runs (other seeds, other algorithms) that the focal learner never met in training.

:func:`evaluate_schedule` (what the suite's cross-play phase runs) plays the co-player kinds of
issue 16 (round robin, held-out checkpoints, uniform random, self-play) on a partner schedule that
is the same for every focal run: see the section below. :func:`evaluate_crossplay` is the earlier
protocol, kept for direct use: per episode, ``n_focal`` slots chosen uniformly at random hold the
focal policy and every other slot an independently, uniformly drawn population member.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import torch
from torch import nn

import envs
from marl.policy.runner import LEARNER, play_episodes
from marl.policy.population import LoadedPolicy, load_policy

POPULATION_KIND_SUITE = "suite-trained held-out population (other seeds / algorithms, never seen in training)"


class PopulationPlayers:
    """Key 0 = the focal actor; keys 1..M = population members."""

    def __init__(self, focal: nn.Module, members: Sequence[nn.Module], n_focal: int):
        if not members:
            raise ValueError("a cross-play population needs at least one member")
        self.focal, self.members, self.n_focal = focal, list(members), n_focal

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        if not 1 <= self.n_focal < n_agents:
            raise ValueError(f"n_focal must be in [1, {n_agents - 1}] for {n_agents} players, got {self.n_focal}")
        keys = 1 + torch.randint(len(self.members), (n_envs, n_agents), generator=generator)
        order = torch.rand(n_envs, n_agents, generator=generator).argsort(-1)
        focal = order[:, : self.n_focal]
        keys.scatter_(1, focal, LEARNER)
        return keys

    def module(self, key: int) -> nn.Module:
        return self.focal if key == LEARNER else self.members[key - 1]


def default_n_focal(n_agents: int) -> int:
    """Half the slots (rounded down, at least one): 1 of 2 in the 2-player games, 3 of 7 in clean_up."""
    return max(1, n_agents // 2)


def focal_return_summary(focal_per_capita: torch.Tensor) -> dict[str, Any]:
    """Mean, std, standard error and the per-episode values of the focal per-capita return [k]."""
    n = int(focal_per_capita.shape[0])
    std = float(focal_per_capita.std(unbiased=True)) if n > 1 else 0.0
    return {
        "focal_per_capita_return": float(focal_per_capita.mean()),
        "focal_per_capita_return_std": std,
        "focal_per_capita_return_sem": std / math.sqrt(n) if n > 1 else 0.0,
        "episodes": n,
        "episode_focal_returns": [round(float(x), 4) for x in focal_per_capita],
    }


def _describe(p: LoadedPolicy) -> dict[str, Any]:
    return {
        "path": p.path,
        "algorithm": p.algorithm,
        **{k: p.info[k] for k in ("seed", "env_steps", "run_id") if k in p.info},
    }


def evaluate_crossplay(
    focal_path: str | Path,
    member_paths: Sequence[str | Path],
    family: str,
    scenario: str,
    env_options: Mapping[str, Any] | None = None,
    episodes: int = 16,
    seed: int = 0,
    num_envs: int = 4,
    n_focal: int | None = None,
    greedy: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Play ``episodes`` episodes (at least; a multiple of the copies) of the focal policy against
    the population; returns the focal per-capita return and what it was measured against."""
    num_envs = max(1, min(num_envs, episodes))
    env = envs.make_env(family, scenario, num_envs=num_envs, seed=seed, device=device, **dict(env_options or {}))
    try:
        focal = load_policy(focal_path, device, expect=env.spec)
        members = [load_policy(p, device, expect=env.spec) for p in member_paths]
        n_focal = default_n_focal(env.spec.n_agents) if n_focal is None else n_focal
        players = PopulationPlayers(focal.actor, [m.actor for m in members], n_focal)
        eps = play_episodes(env, players, math.ceil(episodes / num_envs), seed, greedy, device)
    finally:
        env.close()
    background = (eps.returns * (eps.policy != LEARNER)).sum(-1) / (eps.policy != LEARNER).sum(-1)
    return {
        **focal_return_summary(eps.per_capita(LEARNER)),
        "background_per_capita_return": float(background.mean()),
        "n_focal": n_focal,
        "n_agents": env.spec.n_agents,
        "actions": "greedy" if greedy else "sampled",
        "population_kind": POPULATION_KIND_SUITE,
        "focal": _describe(focal),
        "population": [_describe(m) for m in members],
    }


# Co-player kinds on a common partner schedule ----------------------------------------------------
#
# The populations a focal policy is evaluated against (suites/manifest.py COPLAYER_KINDS,
# docs/evaluation.md): ``round_robin`` (the final policies of the suite's other algorithms' runs; a
# focal run skips the entries of its own algorithm), ``heldout`` (held-out runs at several fractions
# of their training), ``random`` (a uniform-random policy, the floor) and ``self_play`` (the focal
# policy in every seat, the reference of the generalisation gap). Every focal run of a suite meets
# the same schedule: which co-player, which focal seats and which environment seeds each episode
# gets depend on the schedule's seed (the suite and scenario), the member lists (the suite's runs)
# and the episode index only, never on the focal run (common random numbers).

COPLAYER_KINDS = ("round_robin", "heldout", "random", "self_play")
UNSEEN_KINDS = ("round_robin", "heldout", "random")  # the kinds the cross-play score averages
KIND_NAMES = {
    "round_robin": "round robin: the final policies of the suite's other algorithms (never the focal run's own)",
    "heldout": "held-out runs (other seeds, never met in training) at several points of their training",
    "random": "uniform-random policy (the floor)",
    "self_play": "self-play: the focal policy in every seat (not cross-play; the generalisation gap's reference)",
}
# The floor row: a uniform-random policy in the focal seats, on the same partner schedule as every
# focal run (what each co-player kind gives a player that learned nothing).
FLOOR_FOCAL = "uniform_random"
SCORE_KIND = "coplayer_score"
SCORE_NAME = "mean over co-player kinds (round robin, held-out checkpoints, uniform random)"


class UniformRandomActor(nn.Module):
    """Uniform over the available actions, whichever the acting mode: its logits are Gumbel noise
    (-inf where unavailable), so the argmax of greedy acting is a uniform draw and sampling from the
    softmax is, by symmetry, uniform too. Its own generator (re-seeded per batch) keeps it reproducible."""

    hidden_dim = 1

    def __init__(self, n_actions: int, seed: int = 0):
        super().__init__()
        self.n_actions = n_actions
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, 1, device=device)

    def act(self, inp: Any, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        avail = inp.avail.bool()
        u = torch.rand(avail.shape, generator=self.generator).clamp_(1e-12, 1 - 1e-12).to(avail.device)
        logits = -torch.log(-torch.log(u))
        return logits.masked_fill(~avail, float("-inf")), h


def seat_arrangements(n_agents: int, n_focal: int) -> list[tuple[int, ...]]:
    """The focal seats of each arrangement: ``n_focal`` consecutive seats rotated through every seat
    (2 players, 1 focal: seat 0, then seat 1), so the focal policy alternates seats."""
    if not 1 <= n_focal < n_agents:
        raise ValueError(f"n_focal must be in [1, {n_agents - 1}] for {n_agents} players, got {n_focal}")
    out = [tuple(sorted((r + j) % n_agents for j in range(n_focal))) for r in range(n_agents)]
    return list(dict.fromkeys(out))


def partner_schedule(
    members: Mapping[str, Sequence[Any]], n_agents: int, n_focal: int, episodes: int, num_envs: int, seed: int
) -> list[dict[str, Any]]:
    """The episodes of a cross-play evaluation, in order. For each kind (COPLAYER_KINDS order) with
    members, every (member, seat arrangement) pair in turn, repeated in whole cycles until the kind
    has at least ``episodes`` episodes (self-play: one arrangement, every seat the focal policy).
    Episode ``index`` plays in copy ``index % num_envs`` of batch ``index // num_envs``, whose
    environments are reset with ``batch_seed``: a pure function of its arguments."""
    from marl.trainer import derive_seed

    entries: list[dict[str, Any]] = []
    for kind in COPLAYER_KINDS:
        if kind not in members:
            continue
        if kind == "self_play":
            pairs = [(None, tuple(range(n_agents)))]
        else:
            pairs = [(m, seats) for m in range(len(members[kind])) for seats in seat_arrangements(n_agents, n_focal)]
        if not pairs:
            continue
        for _ in range(math.ceil(max(1, episodes) / len(pairs))):
            for member, seats in pairs:
                entries.append({"kind": kind, "member": member, "focal_seats": list(seats)})
    for i, entry in enumerate(entries):
        entry.update(index=i, batch=i // num_envs, copy=i % num_envs, batch_seed=derive_seed(seed, 7, i // num_envs))
    return entries


BATCH_CACHE_FORMAT = 1  # bump when a batch's outcome could change for the same key


class _PolicyIdentity:
    """The content hash of each policy file an evaluation reads (the focal policy, every member),
    computed once per file: a batch key names the policies by what they are, not where they lie."""

    def __init__(self, focal_path: str | Path | None, members: Mapping[str, Sequence[Mapping[str, Any]]]):
        self.focal = FLOOR_FOCAL if focal_path is None else _file_sha256(focal_path)
        self._members = members
        self._hashes: dict[str, str] = {}

    def member(self, kind: str, index: int | None) -> str:
        if kind == "self_play":
            return "self"
        if kind == "random":
            return "uniform_random"
        path = self._members[kind][index].get("path")
        if not path:
            return "unavailable"
        if str(path) not in self._hashes:
            self._hashes[str(path)] = _file_sha256(path)
        return self._hashes[str(path)]


def _file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def batch_key(
    context: Mapping[str, Any], identity: _PolicyIdentity, rows: Sequence[Mapping[str, Any]], skip: Mapping[int, str]
) -> str:
    """What decides a batch's returns: the context (code, environment, copies, acting), the focal
    policy, and per copy its co-player's content, focal seats and whether it is played (a skipped
    copy still plays, focal policy everywhere, and shares the batch's random stream), and the seed."""
    copies = [
        # a skipped copy plays the focal policy in every seat: its member does not matter
        {"copy": e["copy"], "played": False}
        if e["index"] in skip
        else {
            "copy": e["copy"],
            "kind": e["kind"],
            "member": identity.member(e["kind"], e["member"]),
            "focal_seats": list(e["focal_seats"]),
            "played": True,
        }
        for e in rows
    ]
    blob = {"context": dict(context), "focal": identity.focal, "batch_seed": rows[0]["batch_seed"], "copies": copies}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


class _BatchPlayers:
    """Players of one batch of scheduled episodes: the given assignment at the batch's start; copies
    whose first episode ended play on (the focal policy everywhere) but are not recorded."""

    def __init__(self, assignment: torch.Tensor, modules: dict[int, nn.Module]):
        self.assignment, self.modules, self.started = assignment, modules, False

    def assign(self, n_envs: int, n_agents: int, generator: torch.Generator) -> torch.Tensor:
        if not self.started:
            self.started = True
            return self.assignment.clone()
        return torch.full((n_envs, n_agents), LEARNER, dtype=torch.long)

    def module(self, key: int) -> nn.Module:
        return self.modules[key]


@torch.no_grad()
def _play_batch(env: Any, players: _BatchPlayers, seed: int, greedy: bool, device: str) -> torch.Tensor:
    """The first episode of every copy: returns [B, N]."""
    from marl.policy.runner import _Acting

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    acting = _Acting(env, players, generator, greedy, torch.device(device))
    acting.begin(env.reset(seed=seed))
    B, N = env.spec.num_envs, env.spec.n_agents
    returns = torch.full((B, N), float("nan"))
    done = torch.zeros(B, dtype=torch.bool)
    while not bool(done.all()):
        rec = acting.act(record_key=None)
        out, episodes = acting.step(rec["actions"])
        if episodes is not None:
            for j, b in enumerate(out.done.nonzero().squeeze(-1).tolist()):
                if not done[b]:
                    returns[b], done[b] = episodes.returns[j].cpu(), True
    return returns


def evaluate_schedule(
    focal_path: str | Path | None,
    members: Mapping[str, Sequence[Mapping[str, Any]]],
    family: str,
    scenario: str,
    env_options: Mapping[str, Any] | None = None,
    episodes: int = 16,
    seed: int = 0,
    num_envs: int = 2,
    n_focal: int | None = None,
    greedy: bool = False,
    exclude_algorithm: str | None = None,
    device: str = "cpu",
    batch_cache: MutableMapping[str, list] | None = None,
    cache_context: Mapping[str, Any] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Play the partner schedule of ``members`` ({kind: [member]}; a member has ``path`` (None: not
    available) and ``algorithm``; ``random`` and ``self_play`` members need neither) with the focal
    policy (``focal_path`` None: a uniform-random focal player, the floor row). Entries whose
    member is of ``exclude_algorithm`` (round robin) or not available are skipped, never replaced,
    so every played episode is the same for every focal run. Returns per
    kind the focal per-capita return, its per-member breakdown and the schedule indices played.

    ``batch_cache`` ({batch key: returns [B][N]}) holds batches played before: a batch whose key
    (:func:`batch_key`: ``cache_context``, the policies' file contents, the seats, which copies play,
    the batch seed) is in it is not played again, and every batch played is added to it;
    ``on_batch()`` is called after every batch played (to persist the cache, or to stop). On a
    deterministic environment a batch's returns are a function of its key, so an evaluation from
    the cache equals one played afresh (on Melting Pot, whose engine is not bit-reproducible, a
    kept batch is one play of it, like any replay); adding a member re-plays only the batches that
    hold its entries."""
    from marl.trainer import derive_seed

    env = envs.make_env(family, scenario, num_envs=num_envs, seed=seed, device=device, **dict(env_options or {}))
    try:
        spec = env.spec
        n_focal = default_n_focal(spec.n_agents) if n_focal is None else n_focal
        schedule = partner_schedule(members, spec.n_agents, n_focal, episodes, num_envs, seed)
        random_actor = UniformRandomActor(spec.n_actions)
        # The floor's focal player draws from its own stream, apart from the random co-player's.
        focal_actor = (
            load_policy(focal_path, device, expect=spec).actor if focal_path else UniformRandomActor(spec.n_actions)
        )
        loaded: dict[tuple[str, int], nn.Module | None] = {}
        skip: dict[int, str] = {}
        for e in schedule:
            if e["kind"] in ("self_play",):
                continue
            if e["kind"] == "random":
                loaded[(e["kind"], e["member"])] = random_actor
                continue
            m = members[e["kind"]][e["member"]]
            if exclude_algorithm is not None and e["kind"] == "round_robin" and m.get("algorithm") == exclude_algorithm:
                skip[e["index"]] = "own algorithm"
                continue
            key = (e["kind"], e["member"])
            if key not in loaded:
                loaded[key] = load_policy(m["path"], device, expect=spec).actor if m.get("path") else None
            if loaded[key] is None:
                skip[e["index"]] = "not available"
        identity = _PolicyIdentity(focal_path, members) if batch_cache is not None else None
        context = {
            "cache_format": BATCH_CACHE_FORMAT,
            **dict(cache_context or {}),
            "family": family,
            "scenario": scenario,
            "env_options": dict(env_options or {}),
            "num_envs": num_envs,
            "n_agents": spec.n_agents,
            "greedy": greedy,
            "device": str(device),
        }
        results: dict[int, torch.Tensor] = {}
        played_batches = reused_batches = 0
        for batch in sorted({e["batch"] for e in schedule}):
            rows = [e for e in schedule if e["batch"] == batch]
            if all(e["index"] in skip for e in rows):
                continue  # nothing to play; later batches keep their own seeds
            cache_key = batch_key(context, identity, rows, skip) if identity is not None else None
            if cache_key is not None and cache_key in batch_cache:
                returns = torch.tensor(batch_cache[cache_key], dtype=torch.float32)
                reused_batches += 1
                for e in rows:
                    if e["index"] not in skip:
                        results[e["index"]] = returns[e["copy"]]
                continue
            assignment = torch.full((num_envs, spec.n_agents), LEARNER, dtype=torch.long)
            modules: dict[int, nn.Module] = {LEARNER: focal_actor}
            keys: dict[int, int] = {}
            for e in rows:
                if e["index"] in skip or e["kind"] == "self_play":
                    continue
                module = loaded[(e["kind"], e["member"])]
                key = keys.setdefault(id(module), len(keys) + 1)
                modules[key] = module
                others = [s for s in range(spec.n_agents) if s not in e["focal_seats"]]
                assignment[e["copy"], others] = key
            random_actor.reseed(rows[0]["batch_seed"])
            if isinstance(focal_actor, UniformRandomActor):
                focal_actor.reseed(derive_seed(rows[0]["batch_seed"], 1))
            returns = _play_batch(env, _BatchPlayers(assignment, modules), rows[0]["batch_seed"], greedy, device)
            played_batches += 1
            if cache_key is not None:
                batch_cache[cache_key] = returns.tolist()  # float32 -> float -> float32 is exact
            if on_batch is not None:
                on_batch()
            for e in rows:
                if e["index"] not in skip:
                    results[e["index"]] = returns[e["copy"]]
    finally:
        env.close()
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in COPLAYER_KINDS:
        entries = [e for e in schedule if e["kind"] == kind]
        if kind not in members:
            continue
        played = [e for e in entries if e["index"] in results]
        focal_returns = torch.tensor([float(results[e["index"]][e["focal_seats"]].mean()) for e in played])
        record: dict[str, Any] = {
            "kind": kind,
            "population_kind": KIND_NAMES[kind],
            "state": "done" if played else "empty",
            "scheduled": len(entries),
            "skipped_own_algorithm": sum(skip.get(e["index"]) == "own algorithm" for e in entries),
            "skipped_unavailable": sum(skip.get(e["index"]) == "not available" for e in entries),
            "episode_index": [e["index"] for e in played],
            **(focal_return_summary(focal_returns) if played else {"episodes": 0, "focal_per_capita_return": None}),
        }
        if kind != "self_play":
            background = [
                float(results[e["index"]][[s for s in range(spec.n_agents) if s not in e["focal_seats"]]].mean())
                for e in played
            ]
            record["background_per_capita_return"] = sum(background) / len(background) if background else None
            per_member = []
            for i, m in enumerate(members[kind]):
                mine = [e for e in played if e["member"] == i]
                desc = {k: m[k] for k in ("run_id", "algorithm", "label", "seed", "fraction", "name") if k in m}
                vals = [float(results[e["index"]][e["focal_seats"]].mean()) for e in mine]
                per_member.append(
                    {**desc, "episodes": len(vals), "focal_per_capita_return": sum(vals) / len(vals) if vals else None}
                )
            record["population"] = [m for m in per_member if m["episodes"]]
            record["members_not_played"] = [m for m in per_member if not m["episodes"]]
        by_kind[kind] = record
    return {
        "kinds": by_kind,
        "n_focal": n_focal,
        "n_agents": spec.n_agents,
        "num_envs": num_envs,
        "schedule_seed": seed,
        "schedule_length": len(schedule),
        "actions": "greedy" if greedy else "sampled",
        "batches_played": played_batches,
        "batches_reused": reused_batches,
    }


def coplayer_score(by_kind: Mapping[str, Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """(the cross-play score: the mean over the unseen kinds evaluated, the generalisation gap:
    self-play's return minus that score); None where an ingredient is missing."""
    values = [
        float(by_kind[k]["focal_per_capita_return"])
        for k in UNSEEN_KINDS
        if k in by_kind and by_kind[k].get("focal_per_capita_return") is not None
    ]
    score = sum(values) / len(values) if values else None
    sp = by_kind.get("self_play", {}).get("focal_per_capita_return")
    gap = float(sp) - score if score is not None and sp is not None else None
    return score, gap
