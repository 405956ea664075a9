"""The Ray Serve deployment's settings, its Serve config file and its CLI, without a cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from loraroute.agents.server.rayserve import Autoscaling, RayServeArgs, build_app, require_ray
from loraroute.cli import main

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ray_serve.yaml"


def test_engine_replicas_are_a_fixed_count_or_autoscaled():
    fixed = RayServeArgs(num_replicas=3, max_batch_size=4).engine_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 4  # the batch: more go to another replica
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}

    scaled = RayServeArgs(autoscaling=Autoscaling(min_replicas=1, max_replicas=8))
    options = scaled.engine_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["max_replicas"] == 8
    assert options["autoscaling_config"]["target_ongoing_requests"] == 0.7 * 8  # of the batch
    assert scaled.max_replicas == 8

    assert RayServeArgs(device="cuda").engine_options()["ray_actor_options"]["num_gpus"] == 1.0
    # the ingress admits what every replica may take, plus the server's queue
    ingress = RayServeArgs(num_replicas=2, max_ongoing_requests=10).ingress_options()
    assert ingress["ray_actor_options"] == {"num_cpus": 0}
    assert ingress["max_ongoing_requests"] >= 2 * 10 + 64


def test_bad_deployment_settings_say_what_to_change():
    with pytest.raises(ValidationError, match="num_replicas or autoscaling"):
        RayServeArgs(num_replicas=2, autoscaling={"max_replicas": 4})
    with pytest.raises(ValidationError, match="min_replicas \\(5\\) is above max_replicas"):
        Autoscaling(min_replicas=5, max_replicas=2)
    with pytest.raises(ValidationError, match="extra"):
        RayServeArgs(replicas=2)  # a typo in a Serve config file is refused, not ignored


def test_the_example_serve_config_is_valid_for_serve_and_builds():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    app = config.applications[0]
    assert app.import_path == "loraroute.agents.server.rayserve:build_app"
    args = RayServeArgs.model_validate(app.args)
    assert args.num_replicas == 2 and args.max_resident == 16
    built = build_app(app.args)  # binding needs no cluster
    assert type(built).__name__ == "Application"


def test_agents_import_without_ray_and_ray_use_names_the_extra(monkeypatch):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import loraroute.agents, loraroute.agents.server.rayserve, loraroute.agents.cli\n"
        "from loraroute.agents.server.rayserve import require_ray\n"
        "try:\n    require_ray()\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'loraroute[ray]'" in out.stdout

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"loraroute\[ray\]"):
        require_ray()
    result = CliRunner().invoke(main, ["serve", "--ray", "--no-router"])
    assert result.exit_code != 0
    assert "pip install 'loraroute[ray]'" in result.output
    assert "Traceback" not in result.output


def test_ray_options_need_ray_and_clash_with_the_proxy():
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--replicas", "2"])
    assert result.exit_code == 2 and "--replicas: options of --ray" in result.output
    result = runner.invoke(main, ["serve", "--ray", "--engine-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--engine-url: not with --ray" in result.output
    result = runner.invoke(main, ["serve", "--ray", "--replicas", "2", "--max-replicas", "4"])
    assert result.exit_code == 2 and "give one or the other" in result.output
