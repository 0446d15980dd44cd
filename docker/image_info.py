"""Writes the image's version record (SUITE_IMAGE_INFO) during the build; the build arguments
arrive as environment variables. suites/provenance.py copies it into every run's provenance."""

import importlib.metadata
import json
import os
import platform
import sys


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(path: str) -> None:
    env = os.environ
    sc2 = env["INSTALL_SC2"] == "1"
    info = {
        "base_image": env["BASE_IMAGE"],
        "python": platform.python_version(),
        "python_from": env["PYTHON_FROM"],
        "lock_sha256": env["LOCK_SHA256"],
        "torch": version("torch"),
        "torch_variant": env["TORCH_VARIANT"],
        "git_commit": env["GIT_COMMIT"],
        "git_dirty": env["GIT_DIRTY"] == "1",
        "sc2_installed": sc2,
        "sc2_version": env["SC2_VERSION"] if sc2 else None,
        "sc2_build": int(env["SC2_BUILD"]) if sc2 else None,
        "smacv2_commit": env["SMACV2_COMMIT"] if sc2 else None,
        "pysc2": version("pysc2"),
        "protobuf": version("protobuf"),
        "protobuf_implementation": env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"],
        "meltingpot": json.loads(open(os.path.join(sys.prefix, "meltingpot-install.json")).read()),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1])
