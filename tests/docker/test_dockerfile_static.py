"""Static checks of docker/: hadolint, the Dockerfile's structure (dockerfile-parse), the download
manifest and its verifier, the entry point, the version record and how provenance reads it.
No Docker daemon is needed; the real build is tests/docker/test_docker_smoke.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    parser = DockerfileParser(fileobj=open(DOCKERFILE, "rb"))
    return parser


def instructions(parsed: DockerfileParser, kind: str) -> list[str]:
    return [i["value"] for i in parsed.structure if i["instruction"] == kind]


def arg_defaults(parsed: DockerfileParser) -> dict[str, str]:
    out = {}
    for value in instructions(parsed, "ARG"):
        name, _, default = value.partition("=")
        out.setdefault(name.strip(), default.strip().strip('"'))  # a bare re-declaration keeps the default
    return out


def downloads() -> dict[str, tuple[str, str]]:
    entries = {}
    for line in (DOCKER / "downloads.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sha, name, url = line.split()
        entries[name] = (sha, url)
    return entries


def test_hadolint_clean_and_every_exception_justified():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "-f", "json", str(DOCKERFILE)], capture_output=True, text=True)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0
    text = DOCKERFILE.read_text()
    ignored = re.findall(r"#\s*hadolint ignore=([A-Z0-9,]+)", text)
    for codes in ignored:
        for code in codes.split(","):
            # the justification: a comment naming the rule, besides the directive itself
            assert re.search(rf"^#.*\({code}:", text, re.M), f"hadolint ignore={code} has no inline justification"


def test_no_syntax_directive_and_base_pinned_by_digest(parsed):
    first_lines = DOCKERFILE.read_text().splitlines()
    assert not any(re.match(r"#\s*(syntax|escape)\s*=", line) for line in first_lines), "no parser directives"
    code = [i for i in parsed.structure if i["instruction"] != "COMMENT"]
    assert code[0]["instruction"] == "ARG" and code[0]["value"].startswith("BASE_IMAGE="), "ARG BASE_IMAGE first"
    base = arg_defaults(parsed)["BASE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    assert "cuda" in base and "runtime" in base
    assert instructions(parsed, "FROM") == ["${BASE_IMAGE}"], "one stage, FROM the BASE_IMAGE argument"


def test_every_download_goes_through_the_checksummed_fetcher(parsed):
    runs = instructions(parsed, "RUN")
    assert not any(re.search(r"(^|&&|;|\||then|else)\s*(curl|wget)\b", run) for run in runs), "use fetch.sh"
    assert not any(re.search(r"\bADD\b", i["instruction"]) for i in parsed.structure), "ADD may download unchecked"
    args = arg_defaults(parsed)
    entries = downloads()
    fetched = [m for run in runs for m in re.findall(r'fetch\.sh\s+"?([^"\s]+)"?', run)]
    assert len(fetched) == 3  # Python, StarCraft II, the Melting Pot bundle
    for name in fetched:
        resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), name)
        if resolved.startswith("$"):  # a shell variable set in the same RUN (the bundle name)
            resolved = f"meltingpot-assets-{args['MELTINGPOT_ASSETS_VERSION']}.tar.gz"
        assert resolved in entries, f"{resolved} is fetched but not listed in docker/downloads.txt"
    for name, (sha, url) in entries.items():
        assert sha == "UNPINNED" or SHA256.match(sha), f"{name}: bad checksum {sha!r}"
        assert url.startswith("https://"), url
    assert SHA256.match(entries[f"SC2.{args['SC2_VERSION']}.zip"][0]), "the game package must be pinned"
    # every pip install reads only the wheelhouse / local checkouts, never an index
    for run in runs:
        for command in re.findall(r"pip (?:install|wheel)[^&;]*", run):
            assert "--no-index" in command, command


@pytest.fixture()
def fetch_env(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"StarCraft II stand-in\n")
    sha = subprocess.run(["sha256sum", str(payload)], capture_output=True, text=True).stdout.split()[0]
    manifest = tmp_path / "downloads.txt"
    manifest.write_text(
        f"# comment\n{sha}  good.zip  file://{payload}\n{'0' * 64}  bad.zip  file://{payload}\n"
        f"UNPINNED  new.tar.gz  file://{payload}\n"
    )

    def run(name: str):
        dest = tmp_path / f"out-{name}"
        proc = subprocess.run(
            ["sh", str(DOCKER / "fetch.sh"), name, str(dest)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "DOWNLOADS_MANIFEST": str(manifest)},
        )
        return proc, dest

    return run


def test_fetch_verifies_the_pinned_sha256(fetch_env):
    proc, dest = fetch_env("good.zip")
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == b"StarCraft II stand-in\n"
    proc, dest = fetch_env("bad.zip")
    assert proc.returncode != 0 and "does not have the pinned SHA-256" in proc.stderr
    assert not dest.exists(), "a file that fails its checksum is removed"
    proc, dest = fetch_env("new.tar.gz")
    assert proc.returncode != 0 and "build.sh --pin" in proc.stderr and not dest.exists()
    proc, _ = fetch_env("unknown.zip")
    assert proc.returncode != 0 and "not listed in downloads.txt" in proc.stderr


def test_pinned_versions_agree_with_the_project(parsed):
    from envs.meltingpot import DEFAULT_ASSETS_VERSION
    from envs.smac import KNOWN_SC2_BUILDS, SMAC_MAPS, CAPABILITY_MAP_FILE

    args = arg_defaults(parsed)
    assert args["SC2_VERSION"] == "4.10" and KNOWN_SC2_BUILDS[int(args["SC2_BUILD"])].startswith("4.10")
    assert re.fullmatch(r"[0-9a-f]{40}", args["SMACV2_COMMIT"]), "smacv2 is pinned to a full commit"
    setup = (ROOT / "scripts/setup_venv.sh").read_text()
    assert f"MP_VERSION={args['MELTINGPOT_VERSION']}" in setup
    assert args["MELTINGPOT_ASSETS_VERSION"] == DEFAULT_ASSETS_VERSION
    assert re.search(r"^MP_VERSION=" + re.escape(args["MELTINGPOT_VERSION"]), (DOCKER / "build.sh").read_text(), re.M)
    for line in (DOCKER / "requirements-sc2.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[\w.-]+==[\w.]+", line), f"unpinned SC2 requirement {line!r}"
    maps = {}
    for line in (DOCKER / "smac_maps.sha256").read_text().splitlines():
        if line and not line.startswith("#"):
            sha, name = line.split()
            assert SHA256.match(sha)
            maps[name] = sha
    needed = {f"{m}.SC2Map" for m in SMAC_MAPS} | {f"{CAPABILITY_MAP_FILE}.SC2Map"}
    assert needed <= set(maps), f"maps without a checksum: {sorted(needed - set(maps))}"


def test_runtime_contract(parsed):
    env = " ".join(instructions(parsed, "ENV"))
    assert "SC2PATH=/opt/StarCraftII" in env  # the package unzips to StarCraftII/ under /opt
    assert "SUITE_IMAGE_INFO=" in env and "SUITE_GIT_COMMIT=" in env
    users = instructions(parsed, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    entrypoint = instructions(parsed, "ENTRYPOINT")
    assert len(entrypoint) == 1 and json.loads(entrypoint[0]) == ["/opt/marl-repro/src/docker/entrypoint.sh"]
    assert instructions(parsed, "WORKDIR")[-1] == "/opt/marl-repro/src"


def test_the_image_builds_the_fused_gru_extension_or_fails(parsed):
    runs = [r for r in instructions(parsed, "RUN") if "marl.value.fast_gru --build" in r]
    assert len(runs) == 1, "the image builds marl/value/fast_gru.py's C++ extension once"
    # After the project is copied (the source is in src/), with the build required to succeed.
    order = [(i["instruction"], i["value"]) for i in parsed.structure]
    copy_src = max(k for k, (name, value) in enumerate(order) if name == "COPY" and value.startswith("src/ "))
    build = next(k for k, (name, value) in enumerate(order) if name == "RUN" and "fast_gru --build" in value)
    assert build > copy_src and "MARL_FAST_GRU=cpp" in runs[0]
    assert "g++" in runs[0] and "ninja-build" in runs[0] and "purge" in runs[0]  # compiler gone in the same layer


def test_entrypoint_runs_reproduce_or_a_given_program():
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "--help"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0 and "reproduce.py" in proc.stdout and "--backend" in proc.stdout
    proc = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "echo", "worker"], capture_output=True, text=True, env=env
    )
    assert proc.stdout == "worker\n"


def test_build_script_requires_licence_acceptance_for_sc2():
    assert subprocess.run(["bash", "-n", str(DOCKER / "build.sh")]).returncode == 0
    proc = subprocess.run(["bash", str(DOCKER / "build.sh")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--accept-sc2-license" in proc.stderr
    proc = subprocess.run(["bash", str(DOCKER / "build.sh"), "--bogus"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr


def test_image_record_is_read_into_provenance(tmp_path, monkeypatch):
    record = tmp_path / "image.json"
    build_args = {
        "INSTALL_SC2": "1",
        "BASE_IMAGE": "base@sha256:" + "a" * 64,
        "PYTHON_FROM": "apt",
        "LOCK_SHA256": "b" * 64,
        "TORCH_VARIANT": "cpu",
        "GIT_COMMIT": "c" * 40,
        "GIT_DIRTY": "0",
        "SC2_VERSION": "4.10",
        "SC2_BUILD": "75689",
        "SMACV2_COMMIT": "d" * 40,
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
    }
    proc = subprocess.run(
        [sys.executable, str(DOCKER / "image_info.py"), str(record)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **build_args},
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(record.read_text())
    assert info["sc2_build"] == 75689 and info["sc2_version"] == "4.10" and info["lock_sha256"] == "b" * 64
    assert info["meltingpot"]["assets_version"] and info["python"].startswith("3.11")

    from suites.provenance import image_provenance, provenance_extra

    monkeypatch.delenv("SUITE_IMAGE_INFO", raising=False)
    monkeypatch.delenv("SUITE_IMAGE_DIGEST", raising=False)
    assert image_provenance() == {}
    monkeypatch.setenv("SUITE_IMAGE_INFO", str(record))
    monkeypatch.setenv("SUITE_IMAGE_DIGEST", "sha256:" + "e" * 64)
    assert image_provenance() == {"image_digest": "sha256:" + "e" * 64, "image": info}
    assert provenance_extra("docker")["image"]["smacv2_commit"] == "d" * 40
