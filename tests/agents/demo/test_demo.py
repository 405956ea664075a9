"""``adapters demo`` end to end on the tiny base: train, push, fit the router, chat; then reuse."""

from __future__ import annotations

from click.testing import CliRunner

from loraroute.agents.demo import DemoConfig, demo_router, run_demo
from loraroute.agents.demo.data import CALIBRATION, DOMAINS
from loraroute.cli import main as cli


def small_config(tiny_base) -> DemoConfig:
    names = {"cooking", "space"}
    return DemoConfig(
        base_model=str(tiny_base),
        max_steps=2,
        last_layers=None,
        max_new_tokens=4,
        domains=tuple(d for d in DOMAINS if d.name in names),
        calibration=tuple((t, label) for t, label in CALIBRATION if label in names | {None}),
        script=(
            "How should I cook mushrooms so they are not soggy?",
            "Why does Mars look red in the night sky?",
        ),
    )


def test_demo_trains_routes_chats_then_reuses(lr_home, tiny_base):
    lines: list[str] = []
    first = run_demo(small_config(tiny_base), settings=lr_home, say=lines.append)
    assert sorted(first.trained) == ["cooking@1", "space@1"] and not first.reused
    assert [t.adapter for t in first.turns] == ["cooking@1", "space@1"]
    assert all(isinstance(t.answer, str) for t in first.turns)
    assert any("router" in line for line in lines)

    registry, router = demo_router(settings=lr_home)
    assert registry.resolve("cooking:prod").version == 1
    assert router.fitted

    second = run_demo(small_config(tiny_base), settings=lr_home, say=lines.append)
    assert sorted(second.reused) == ["cooking@1", "space@1"] and not second.trained


def test_demo_command_is_registered():
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0 and "Train four small domain adapters" in result.output
