"""The evidence behind tuned defaults: the file is checked against the config classes, every run it
cites has a committed compact record, and the report's choices table shows it beside the field."""

from __future__ import annotations

import pytest
import yaml

from reports.collect import collect
from reports.configuration import CHOICE_EVIDENCE, choice_evidence, method_choices
from suites.records import RECORDS
from tests.reports.synthetic import FakeRun, write_suite


def test_the_shipped_evidence_loads_and_cites_only_committed_runs():
    evidence = choice_evidence(CHOICE_EVIDENCE)
    index = yaml.safe_load((RECORDS / "index.yaml").read_text())
    committed = {run["id"] for suite in index["suites"] for run in suite["runs"]}
    for algorithm, fields in evidence.items():
        for name, entry in fields.items():
            missing = set(entry["runs"]) - committed
            assert not missing, f"{algorithm}.{name} cites runs without a committed record: {sorted(missing)}"


@pytest.mark.parametrize(
    "body,message",
    [
        ({"ddn": {"acting_typo": {"value": "student", "evidence": "x", "runs": []}}}, "no such config field"),
        ({"ddn": {"acting": {"value": "student", "runs": []}}}, "missing evidence"),
        ({"ddn": {"acting": {"value": "student", "evidence": "x", "runs": "abc"}}}, "runs must be a list"),
    ],
)
def test_bad_evidence_entries_are_errors(tmp_path, body, message):
    path = tmp_path / "choice_evidence.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ValueError, match=message):
        choice_evidence(path)


def test_method_choices_carry_the_evidence_of_their_field(tmp_path, monkeypatch):
    path = tmp_path / "choice_evidence.yaml"
    path.write_text(
        yaml.safe_dump({"ddn": {"acting": {"value": "mixed", "evidence": "held on 3 seeds", "runs": ["r1"]}}})
    )
    monkeypatch.setattr("reports.configuration.choice_evidence", lambda: choice_evidence(path))
    root = write_suite(tmp_path / "store", "s", [FakeRun("smax", "3m", "ddn", 0, final=0.5)])
    fields = {f.name: f for f in method_choices(collect(root))["ddn"]}
    assert fields["acting"].evidence == {"value": "mixed", "evidence": "held on 3 seeds", "runs": ["r1"]}
    assert fields["distill_q_loss"].evidence is None


def _choices_with_an_older_run(tmp_path, algorithm: str, missing: tuple[str, ...]) -> tuple[dict, dict]:
    """Two runs of ``algorithm``; the first one's provenance lacks the ``missing`` config fields (a run
    from before they existed). Returns (the choices table's fields by name, that run's full config)."""
    import json

    root = write_suite(
        tmp_path / "store",
        "s",
        [FakeRun("smax", "3m", algorithm, 0, final=0.5), FakeRun("smax", "3m", algorithm, 1, final=0.5)],
    )
    older = sorted(root.rglob("provenance.json"))[0]
    provenance = json.loads(older.read_text())
    config = dict(provenance["config"])
    for key in missing:
        del provenance["config"][key]
    older.write_text(json.dumps(provenance))
    return {f.name: f for f in method_choices(collect(root))[algorithm]}, config


def test_a_field_absent_from_an_older_runs_config_shows_its_class_default(tmp_path):
    """A run whose provenance predates a config field ran at that field's class default: the
    choices table shows the default for it, not ``null``."""
    fields, _ = _choices_with_an_older_run(tmp_path, "ddn", ("student_lr_scale",))
    assert [value for value, _ in fields["student_lr_scale"].values] == ["1.0"]
    assert fields["student_lr_scale"].default == "1.0" and not fields["student_lr_scale"].changed


def test_a_network_field_absent_from_an_older_policy_run_shows_the_earlier_networks(tmp_path):
    """MAPPO's layer_norm / actor_fc_layers came with defaults that changed the networks: a run whose
    provenance lacks them ran the earlier networks (PolicyLearnerConfig.ABSENT_MEANS), and the
    choices table says so beside a run at today's defaults."""
    fields, config = _choices_with_an_older_run(tmp_path, "mappo", ("layer_norm", "actor_fc_layers"))
    assert config["layer_norm"] is True  # today's default
    assert sorted(value for value, _ in fields["layer_norm"].values) == ["false", "true"]
    assert sorted(value for value, _ in fields["actor_fc_layers"].values) == ["1", "2"]
    assert fields["layer_norm"].default == "true" and fields["layer_norm"].changed
