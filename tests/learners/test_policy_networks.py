"""The policy networks (marl/policy/networks.py): image preprocessing, the observation encoder's
shapes, GRU resets at episode starts, the actor's sequence pass equal to stepping it, on-policy's
networks at the defaults (by hand), the earlier networks, and loading an artifact of the earlier ones."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec
from marl.policy.config import PolicyLearnerConfig
from marl.policy.networks import NEG_INF, ActInput, ObsEncoder, RecurrentActor, preprocess_image, run_gru

# Encoders and the recurrent actor ----------------------------------------------------------------


def test_preprocess_image_block_means_rounded_channels_first():
    x = torch.zeros(2, 16, 8, 3, dtype=torch.uint8)  # two images, 2 x 1 blocks of 8 x 8
    x[0, :8, :, 0] = 10  # block (0, 0), channel 0: constant
    x[0, :2, :, 1] = 255  # 16 of 64 pixels at 255: mean 63.75 -> 64
    x[0, 8:, :, 2] = 100
    x[0, 8, 0, 2] = 120  # one pixel +20: mean 100.3125 -> 100
    x[1, 8:, :4, 0] = 1  # half the pixels at 1 ... and 3 at 2: mean (32 + 3) / 64 = 0.547 -> 1
    x[1, 8, :3, 0] = 2
    out = preprocess_image(x, 8)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 2, 1)
    expected = torch.zeros(2, 3, 2, 1, dtype=torch.uint8)
    expected[0, 0, 0, 0], expected[0, 1, 0, 0], expected[0, 2, 1, 0] = 10, 64, 100
    expected[1, 0, 1, 0] = 1
    assert torch.equal(out, expected)

    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (3, 4, 16, 24, 3), dtype=torch.uint8, generator=g)
    out = preprocess_image(big, 8)
    assert out.shape == (3, 4, 3, 2, 3)
    blocks = big.double().reshape(3, 4, 2, 8, 3, 8, 3).mean(dim=(3, 5))  # [.., 2, 3, C]
    assert torch.equal(out, blocks.round().to(torch.uint8).permute(0, 1, 4, 2, 3))
    assert torch.equal(preprocess_image(big, 1), big.permute(0, 1, 4, 2, 3))


def test_obs_encoder_shapes_for_images_with_extras_and_ids_and_for_vectors():
    torch.manual_seed(0)
    enc = ObsEncoder((40, 48, 3), extra_dim=2, id_dim=3, hidden_dim=8, downsample=8, channels=(4, 5), kernel=3)
    # stored 5 x 6 cells; two unpadded 3x3 convolutions: 3 x 4, then 1 x 2
    assert enc.stored_shape == (3, 5, 6) and enc.fc.in_features == 5 * 1 * 2 + 2 + 3
    raw = torch.randint(0, 256, (5, 40, 48, 3), dtype=torch.uint8)
    stored = enc.preprocess(raw)
    assert stored.shape == (5, 3, 5, 6) and stored.dtype == torch.uint8
    ids = torch.tensor([0, 1, 2, 0, 1])
    out = enc(stored, torch.randn(5, 2), ids)
    assert out.shape == (5, 8) and (out >= 0).all()
    # the one-hot id reaches the output
    with torch.no_grad():
        enc.fc.bias.fill_(10.0)  # all units active, so any input change shows
    extra = torch.randn(5, 2)
    assert not torch.allclose(enc(stored, extra, ids), enc(stored, extra, (ids + 1) % 3))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        ObsEncoder((16, 24, 3), extra_dim=0, id_dim=0, hidden_dim=8, downsample=8, channels=(4,), kernel=3)

    vec = ObsEncoder((7,), extra_dim=0, id_dim=0, hidden_dim=6)
    assert vec.cnn is None and vec.stored_shape == (7,) and vec.fc.in_features == 7
    assert vec(vec.preprocess(torch.randn(4, 7)), None, None).shape == (4, 6)


def test_run_gru_resets_exactly_at_episode_starts():
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 4)
    L, M = 6, 3
    feats, h0 = torch.randn(L, M, 3), torch.randn(M, 4)
    starts = torch.tensor(
        [
            [False, True, False],
            [False, False, False],
            [True, False, False],
            [False, False, True],
            [True, True, False],
            [False, False, False],
        ]
    )
    got = run_gru(cell, feats, h0, starts)
    for m in range(M):
        h = h0[m : m + 1]
        for t in range(L):
            if starts[t, m]:
                h = torch.zeros_like(h)
            h = cell(feats[t, m : m + 1], h)
            assert torch.allclose(got[t, m], h[0], atol=1e-6), (t, m)


def _vector_spec(n_agents=2, n_actions=4, obs_dim=6, state_dim=5) -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="vec",
        num_envs=1,
        n_agents=n_agents,
        n_actions=n_actions,
        obs_shape=(obs_dim,),
        state_shape=(state_dim,),
        episode_limit=10,
    )


def test_actor_sequence_equals_stepping_act_with_resets():
    torch.manual_seed(0)
    spec = _vector_spec()
    cfg = PolicyLearnerConfig(hidden_dim=8, actor_agent_id=True)
    actor = RecurrentActor(spec, cfg)
    with torch.no_grad():  # a visible policy head (MAPPO's initial gain 0.01 makes logits ~0)
        actor.head.weight.mul_(100.0)
    L, M = 7, 3
    obs, state = torch.randn(L, M, 6), torch.randn(L, M, 5)
    ids = torch.tensor([0, 1, 0]).expand(L, M)
    avail = torch.rand(L, M, 4) < 0.7
    avail[..., 0] = True
    starts = torch.rand(L, M) < 0.3
    starts[0] = True
    inp = ActInput(obs, torch.zeros(L, M, 0), ids, avail, state)
    seq = actor.sequence(inp, torch.randn(M, 8), starts)  # h0 is ignored where starts[0] is true
    h = actor.initial_hidden(M)
    for t in range(L):
        h = h * (~starts[t]).unsqueeze(-1).float()
        logits, h = actor.act(ActInput(obs[t], torch.zeros(M, 0), ids[t], avail[t], state[t]), h)
        assert torch.allclose(seq["logits"][t], logits, atol=1e-5)
        assert torch.allclose(seq["hidden"][t], h, atol=1e-6)
        assert (logits[~avail[t]] == NEG_INF).all()
    assert seq["logits"][avail].std() > 0.1  # not near-uniform: the comparison has teeth


# on-policy's networks at the defaults, and the earlier ones --------------------------------------


def _image_spec() -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="img",
        num_envs=1,
        n_agents=2,
        n_actions=5,
        obs_shape=(40, 40, 3),  # 5 x 5 cells after the 8x pooling
        state_shape=(48, 40, 3),
        episode_limit=10,
        obs_dtype=torch.uint8,
        extra_obs_shapes={"READY_TO_SHOOT": (1,)},
    )


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _has_layer_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.LayerNorm) for m in module.modules())


def _columns_orthonormal(w: torch.Tensor) -> bool:  # GRU weights are [3H, H]: orthonormal columns
    return torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-5)


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_default_networks_are_on_policy_s(kind):
    # on-policy (r_actor_critic.py): base with two FC layers (CNNLayer: conv, FC, FC; MLPBase:
    # LayerNorm on the input, then FC -> ReLU -> LayerNorm twice), GRU with orthogonal weights and
    # zero biases, LayerNorm on the GRU output under the heads; the carried hidden state stays raw.
    from marl.policy.networks import RecurrentCritic

    torch.manual_seed(0)
    cfg = PolicyLearnerConfig()
    assert cfg.layer_norm and cfg.actor_fc_layers == 2 and cfg.orthogonal_init
    spec = _image_spec() if kind == "image" else _vector_spec()
    actor, critic = RecurrentActor(spec, cfg), RecurrentCritic(spec, cfg)
    assert len(_linears(actor.encoder)) == 2
    assert _has_layer_norm(actor.encoder) == (kind == "vector")  # on-policy's CNN base has none
    for gru in (actor.gru, critic.gru):
        assert _columns_orthonormal(gru.weight_ih) and _columns_orthonormal(gru.weight_hh)
        assert not gru.bias_ih.any() and not gru.bias_hh.any()
    M = 3
    if kind == "image":
        obs = actor.encoder.preprocess(torch.randint(0, 256, (M, 40, 40, 3), dtype=torch.uint8))
        extra, state = torch.randn(M, 1), critic.preprocess(torch.randint(0, 256, (M, 48, 40, 3), dtype=torch.uint8))
    else:
        obs, extra, state = torch.randn(M, 6), torch.zeros(M, 0), torch.randn(M, 5)
    avail = torch.ones(M, spec.n_actions, dtype=torch.bool)
    inp = ActInput(obs, extra, torch.arange(M) % 2, avail, state)
    with torch.no_grad():
        h0 = torch.randn(M, cfg.hidden_dim)
        logits, h = actor.act(inp, h0)
        # By hand: the encoder's two FC layers, the GRU, then LayerNorm (unit gain, zero shift at init).
        x = actor.encoder.cnn(obs.float() / 255.0) if kind == "image" else obs
        x = torch.cat([x, extra], -1)
        if kind == "vector":
            x = F.layer_norm(x, x.shape[-1:])
        for lin in _linears(actor.encoder):
            x = torch.relu(lin(x))
            if kind == "vector":
                x = F.layer_norm(x, x.shape[-1:])
        assert torch.allclose(h, actor.gru(x, h0), atol=1e-5)
        assert torch.allclose(logits, actor.head(F.layer_norm(h, h.shape[-1:])), atol=1e-5)
        values, hc = critic.step(state[:1], torch.randn(1, 2, cfg.hidden_dim))  # one env copy, its 2 agents
        assert torch.allclose(values, critic.v(F.layer_norm(hc, hc.shape[-1:])).squeeze(-1), atol=1e-5)


def test_layer_norm_off_and_one_fc_layer_give_the_earlier_networks():
    cfg = PolicyLearnerConfig(layer_norm=False, actor_fc_layers=1)
    from marl.policy.networks import RecurrentCritic

    for spec in (_image_spec(), _vector_spec()):
        actor, critic = RecurrentActor(spec, cfg), RecurrentCritic(spec, cfg)
        assert not _has_layer_norm(actor) and not _has_layer_norm(critic)
        assert len(_linears(actor.encoder)) == 1  # encoder -> ReLU -> GRU -> head
    with pytest.raises(ValueError, match="at least one FC layer"):
        RecurrentActor(_vector_spec(), PolicyLearnerConfig(actor_fc_layers=0))


def test_a_policy_artifact_written_before_the_network_fields_loads_as_it_was_built(tmp_path):
    # Artifacts of commit 9783904 and earlier (records/reference/bidist_stag_hunt at 600k) have no
    # layer_norm / actor_fc_layers in their config: they were the earlier networks.
    from marl.policy.population import LEGACY_NETWORK, load_policy, save_policy

    torch.manual_seed(0)
    spec = _vector_spec()
    old_cfg = PolicyLearnerConfig(**LEGACY_NETWORK)
    actor = RecurrentActor(spec, old_cfg)
    path = tmp_path / "policy.pt"
    save_policy(path, "mappo", old_cfg, spec, actor)
    blob = torch.load(path, weights_only=False)
    for key in LEGACY_NETWORK:
        del blob["config"][key]
    torch.save(blob, path)
    loaded = load_policy(path)
    assert not _has_layer_norm(loaded.actor) and len(_linears(loaded.actor.encoder)) == 1
    inp = ActInput(
        torch.randn(3, 6),
        torch.zeros(3, 0),
        torch.zeros(3, dtype=torch.long),
        torch.ones(3, 4, dtype=torch.bool),
        torch.randn(3, 5),
    )
    with torch.no_grad():
        assert torch.equal(loaded.actor.act(inp, torch.zeros(3, 64))[0], actor.act(inp, torch.zeros(3, 64))[0])
    # A new artifact keeps its own fields.
    save_policy(path, "mappo", PolicyLearnerConfig(), spec, RecurrentActor(spec, PolicyLearnerConfig()))
    assert _has_layer_norm(load_policy(path).actor)


def test_the_committed_600k_population_still_loads(tmp_path):
    # That campaign's artifacts (earlier networks) left the tree when it was superseded (its policies
    # first, then its compact records); commit 17467c3 holds both. Load three of them from git as a
    # user restoring them would.
    import subprocess
    from pathlib import Path

    from marl.policy.population import load_policy

    repo = Path(__file__).parents[2]
    folder = "records/reference/bidist_stag_hunt"
    commit = "17467c3deb07dc89b9e5bb1edbc1e909a6f0de6c"  # the superseded 600k campaign with its policies (README)
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", commit, "--", folder], cwd=repo, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip(f"this checkout lacks commit {commit[:12]} (a shallow clone?)")
    paths = [p for p in listed.stdout.split() if p.endswith("/policy.pt")][:3]
    assert len(paths) == 3
    for i, path in enumerate(paths):
        blob = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, check=True).stdout
        (tmp_path / f"{i}.pt").write_bytes(blob)
        loaded = load_policy(tmp_path / f"{i}.pt")
        assert not _has_layer_norm(loaded.actor) and len(_linears(loaded.actor.encoder)) == 1
