"""OW-/CW-QMIX: weights, the central target, the combined loss, and the matrix-game result."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines.wqmix import CentralFFMixer, CWQMixConfig, OWQMixConfig, cw_weights, ow_weights
from envs import make_env
from marl.registry import get_algorithm
from marl.trainer import Budget, train_run


def test_registry_and_defaults():
    ow, cw = get_algorithm("ow_wqmix"), get_algorithm("cw_wqmix")
    assert ow.config_cls is OWQMixConfig and cw.config_cls is CWQMixConfig
    c = cw.make_config({})
    assert (c.hysteretic_qmix, c.w, c.central_mixing_embed_dim, c.central_action_embed, c.central_rnn_hidden_dim) == (
        False,
        0.1,
        256,
        1,
        64,
    )
    assert ow.make_config({}).hysteretic_qmix is True
    assert ow.kind == "value"


def test_ow_weights():
    q_tot = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([[2.0, 2.0, 2.0]])
    assert ow_weights(q_tot, y, 0.1).tolist() == [[1.0, pytest.approx(0.1), pytest.approx(0.1)]]


def test_cw_weights():
    # Three transitions of two agents; greedy joint action (0, 1) everywhere.
    actions = torch.tensor([[[0, 1], [0, 2], [2, 2]]])
    greedy = torch.tensor([[[0, 1], [0, 1], [0, 1]]])
    y = torch.tensor([[0.0, 5.0, 1.0]])
    best = torch.tensor([[9.0, 4.0, 3.0]])  # Q*(s, u_hat)
    w = cw_weights(actions, greedy, y, best, 0.25)
    # greedy action -> 1 even though y < Q*; non-greedy with y > Q* -> 1; otherwise alpha.
    assert w.tolist() == [[1.0, 1.0, 0.25]]


def test_central_mixer_is_unrestricted():
    torch.manual_seed(0)
    mixer = CentralFFMixer(n_agents=2, state_dim=3, embed_dim=16)
    states = torch.randn(64, 3)
    qs = torch.randn(64, 2, requires_grad=True)
    mixer(qs, states).sum().backward()
    # Unlike QMIX's abs() weights, dQ*/dQ_i takes both signs.
    assert (qs.grad < 0).any() and (qs.grad > 0).any()
    assert mixer(qs, states).shape == (64,)


def two_step_batch(n_actions: int = 3, C: int = 4) -> dict[str, torch.Tensor]:
    """C episodes of one non-terminal (truncated) step each, so targets bootstrap from t = 1."""
    torch.manual_seed(1)
    return {
        "obs": torch.randn(C, 2, 2, 5),
        "state": torch.randn(C, 2, 5),
        "avail_actions": torch.ones(C, 2, 2, n_actions, dtype=torch.bool),
        "actions": torch.randint(0, n_actions, (C, 1, 2)),
        "reward": torch.randn(C, 1),
        "terminated": torch.zeros(C, 1, dtype=torch.bool),
        "filled": torch.ones(C, 1, dtype=torch.bool),
    }


def make_learner(name: str, **overrides):
    env = make_env("matrix_game", "wqmix_payoff", num_envs=1)
    alg = get_algorithm(name)
    torch.manual_seed(0)
    return alg.make_learner(alg.make_config({"gamma": 0.5, **overrides}), env.spec)


def expected_quantities(learner, batch):
    """Hand computation of y, Q_tot, Q* and the greedy actions from the learner's networks."""
    with torch.no_grad():
        q = learner.agent_q(learner.agent, batch)  # [C, 2, N, A]
        greedy = q.argmax(-1)
        qc_t = learner.agent_q(learner.target_central_agent, batch)
        star_t = learner.target_central_mixer(qc_t.gather(-1, greedy.unsqueeze(-1)).squeeze(-1), batch["state"])
        y = batch["reward"][:, 0] + learner.cfg.gamma * star_t[:, 1]
        chosen = q[:, 0].gather(-1, batch["actions"][:, 0].unsqueeze(-1)).squeeze(-1)
        q_tot = learner.mixer(chosen, batch["state"][:, 0])
        qc = learner.agent_q(learner.central_agent, batch)
        q_star = learner.central_mixer(
            qc[:, 0].gather(-1, batch["actions"][:, 0].unsqueeze(-1)).squeeze(-1), batch["state"][:, 0]
        )
    return y, q_tot, q_star, greedy, star_t


@pytest.mark.parametrize("name", ["ow_wqmix", "cw_wqmix"])
def test_loss_uses_central_target_and_weights(name):
    learner = make_learner(name)
    batch = two_step_batch()
    # Make the target networks differ from the online ones, so using the wrong one would show.
    for m in (learner.target_central_agent, learner.target_central_mixer, learner.target_mixer, learner.target_agent):
        for p in m.parameters():
            p.data.add_(0.3 * torch.randn_like(p))
    y, q_tot, q_star, greedy, star_t = expected_quantities(learner, batch)
    loss, stats = learner.compute_loss(batch)
    assert stats["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5, abs=1e-6)
    if name == "ow_wqmix":
        w = torch.where(q_tot < y, 1.0, 0.1)
    else:
        is_greedy = (batch["actions"][:, 0] == greedy[:, 0]).all(-1)
        w = torch.where(is_greedy | (y > star_t[:, 0]), 1.0, 0.1)
    qmix_loss = (w * (q_tot - y) ** 2).mean()
    central_loss = ((q_star - y) ** 2).mean()
    assert stats["qmix_loss"] == pytest.approx(float(qmix_loss), rel=1e-5)
    assert stats["central_loss"] == pytest.approx(float(central_loss), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(qmix_loss + central_loss), rel=1e-5)
    assert stats["w_mean"] == pytest.approx(float(w.mean()), rel=1e-6)

    # The bootstrap comes from Q*'s target: changing QMIX's target mixer leaves y unchanged, changing
    # the central target mixer moves it.
    other = copy.deepcopy(learner)
    for p in other.target_mixer.parameters():
        p.data.add_(1.0)
    assert other.compute_loss(batch)[1]["target_mean"] == pytest.approx(stats["target_mean"], rel=1e-6)
    for p in other.target_central_mixer.parameters():
        p.data.add_(1.0)
    assert other.compute_loss(batch)[1]["target_mean"] != pytest.approx(stats["target_mean"], rel=1e-3)


def test_update_targets_copies_central_networks():
    learner = make_learner("cw_wqmix")
    for p in learner.central_mixer.parameters():
        p.data.add_(1.0)
    learner.update_targets()
    for a, b in zip(learner.central_mixer.parameters(), learner.target_central_mixer.parameters()):
        assert torch.equal(a, b)
    assert {"central_agent", "central_mixer", "target_central_agent", "target_central_mixer"} <= set(learner.modules())


# Learning: the paper's matrix game with uniform exploration (epsilon = 1 throughout) --------------


def greedy_return(name: str) -> float:
    rows = train_run(
        name,
        "matrix_game",
        "wqmix_payoff",
        seed=0,
        budget=Budget(env_steps=32 * 150, eval_interval=10**9, eval_episodes=4),
        overrides={"epsilon_start": 1.0, "epsilon_finish": 1.0, "num_envs": 32},
    )
    return rows[-1]["test_return_mean"]


@pytest.mark.slow
def test_matrix_game_qmix_misses_the_optimum_and_wqmix_finds_it():
    # QMIX's monotonic Q_tot, trained on uniform data, prefers the safe (B|C, B|C) actions (payoff
    # 0); OW- and CW-QMIX recover (A, A) with payoff 8 (Rashid et al. 2020, Table 2 / Figure 3).
    assert greedy_return("qmix") == 0.0
    assert greedy_return("ow_wqmix") == 8.0
    assert greedy_return("cw_wqmix") == 8.0
