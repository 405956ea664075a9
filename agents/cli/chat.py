"""``adapters chat``: talk to the base model and its adapters, routed or pinned."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from loraroute.cli_options import registry_options


@click.command("chat")
@click.argument("message", required=False)
@click.option(
    "-m",
    "--model",
    default="auto",
    show_default=True,
    help='"auto" routes each turn; "base" uses the bare base; or an adapter ref (legal:prod).',
)
@click.option("--base-model", default=None, help="Base model name or folder (default: settings).")
@registry_options
@click.option("--system", default=None, help="A system message for the conversation.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=None, type=int)
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: settings).")
@click.option(
    "--json", "as_json", is_flag=True, help="One-shot: print the answer and metadata as JSON."
)
def chat_cmd(
    message: str | None,
    model: str,
    base_model: str | None,
    registry_url: str | None,
    token: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Chat with MESSAGE (one shot), or start an interactive session without it.

    \b
    Examples:
      adapters chat "Is this NDA clause enforceable?"
      adapters chat --model legal:prod
      adapters chat --model base --json "hello"
    """
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from ..chat_model import ChatLoraRoute

    llm = ChatLoraRoute(  # type: ignore[call-arg]  # pydantic alias: model / model_name
        model=model,
        base_model=base_model,
        registry=_registry(registry_url, token),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        device=device,
    )
    history: list = [SystemMessage(system)] if system else []

    def turn(text: str, stream: bool) -> AIMessage:
        history.append(HumanMessage(text))
        if not stream:
            reply = llm.invoke(history)
        else:
            full: Any = None
            for chunk in llm.stream(history):
                click.echo(chunk.content, nl=False)
                full = chunk if full is None else full + chunk
            click.echo()
            reply = AIMessage(
                content=full.content,
                response_metadata=full.response_metadata,
                usage_metadata=full.usage_metadata,
            )
        history.append(reply)
        return reply

    if message is not None:
        reply = turn(message, stream=not as_json)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "content": reply.content,
                        "metadata": reply.response_metadata,
                        "usage": reply.usage_metadata,
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            _footer(reply)
        return
    if as_json:
        raise click.UsageError("--json needs a MESSAGE (one-shot mode)")
    click.echo("Chat: empty line or Ctrl-D to quit.", err=True)
    while True:
        try:
            text = input("> ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        except EOFError:
            break
        if not text.strip():
            break
        _footer(turn(text, stream=True))


def _footer(reply) -> None:
    meta = reply.response_metadata
    ref = meta.get("adapter_ref") or "base"
    conf = meta.get("route_confidence")
    routed = f", routed with confidence {conf:.2f}" if conf is not None else ""
    usage = reply.usage_metadata or {}
    click.echo(
        f"[{ref}{routed}; {usage.get('input_tokens', '?')} in / "
        f"{usage.get('output_tokens', '?')} out tokens]",
        err=True,
    )


def register(group: click.Group) -> None:
    group.add_command(chat_cmd)


def _registry(registry_url: str | None, token: str | None) -> object:
    """The registry to route with: a URL the chat model opens, or one opened with ``token``."""
    if token is None:
        return registry_url
    from loraroute.registry import open_registry

    return open_registry(registry_url, token=token)
