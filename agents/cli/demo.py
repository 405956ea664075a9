"""``adapters demo``: the end-to-end tour on embedded defaults."""

from __future__ import annotations

import click


@click.command()
@click.option("--base-model", default=None, help="Base model name or folder (default: settings).")
@click.option("--steps", "max_steps", default=None, type=int, help="Training steps per adapter.")
@click.option("--max-new-tokens", default=None, type=int, help="Answer length per turn.")
@click.option("--json", "as_json", is_flag=True, help="Print the turns as JSON at the end.")
def demo(
    base_model: str | None, max_steps: int | None, max_new_tokens: int | None, as_json: bool
) -> None:
    """Train four small domain adapters, push them, and route a scripted conversation.

    Adapters already in the demo registry (same data, same base) are reused, so a second
    run only loads the models and chats.
    """
    import json
    import time
    import warnings

    from rich.console import Console
    from rich.panel import Panel

    from loraroute.settings import library_default

    from ..demo.run import DemoConfig, run_demo

    # The demo prints its own stage and step lines; the libraries' per-load bars and
    # deprecation notices only bury them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    library_default("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    console = Console()
    started = time.perf_counter()

    def say(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}")

    def on_turn(turn) -> None:
        who = turn.adapter or "base"
        console.print(
            Panel(
                f"[bold]user:[/bold] {turn.request}\n[bold]{who}[/bold] "
                f"(score {turn.score:.2f}): {turn.answer}",
                title=f"routed to [cyan]{who}[/cyan]",
                expand=False,
            )
        )

    config = DemoConfig()
    if base_model:
        config.base_model = base_model
    if max_steps:
        config.max_steps = max_steps
    if max_new_tokens:
        config.max_new_tokens = max_new_tokens
    result = run_demo(config, say=say, on_turn=on_turn)
    say(
        f"done in {result.seconds:.0f} s: trained {len(result.trained)}, "
        f"reused {len(result.reused)} adapters"
    )
    if as_json:
        click.echo(json.dumps([t.__dict__ for t in result.turns], indent=2))


def register(group: click.Group) -> None:
    group.add_command(demo)
