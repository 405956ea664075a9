"""How the ingress's :class:`RayRunning` sends a request again when its replica dies.

A real replica dies at a moment no test controls, so these cases script the replica's side: a
stand-in for Serve's handle whose calls replay the events a replica sends and raise Ray's own
``ActorDiedError`` where the replica would die. The cluster test (``test_rayserve.py``) kills a
real replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from loraroute.agents.server.backends import Delta, Final, Prepared, Target
from loraroute.agents.server.errors import APIError
from loraroute.agents.server.rayserve import RayBackend, RayServeArgs


class Script:
    """One replica's answer to one call: events, then maybe death."""

    def __init__(self, replica: str, texts: list[str], *, die_after: int | None = None):
        self.replica, self.texts, self.die_after = replica, texts, die_after
        self.cancelled = False

    def __aiter__(self):  # as Serve's DeploymentResponseGenerator: one stream of events
        return self

    def __anext__(self):
        if not hasattr(self, "_it"):
            self._it = self._events()
        return self._it.__anext__()

    async def _events(self):
        yield {
            "event": "start",
            "replica": self.replica,
            "adapter_was_resident": True,
            "adapter_ref": "legal@1",
            "adapter_digest": "sha256:ab",
            "resident": [],
            "loads": 0,
            "max_resident": 2,
        }
        for i, text in enumerate(self.texts):
            if self.die_after is not None and i == self.die_after:
                raise ActorDiedError()
            yield {"event": "delta", "index": 0, "delta": Delta(text)}
        if self.die_after is not None and self.die_after >= len(self.texts):
            raise ActorDiedError()
        content = "".join(self.texts)
        final = Final(content, 3, len(self.texts), "stop")
        yield {"event": "final", "index": 0, "final": final}

    def cancel(self) -> None:
        self.cancelled = True


class Scripted(RayBackend):
    """A RayBackend whose replica calls follow ``scripts`` in turn."""

    def __init__(self, scripts: list[Any], retries: int = 3):
        super().__init__(None, RayServeArgs(retries=retries, base_model="base-model"))
        self.scripts = list(scripts)
        self.calls = 0

    def _call(self, target, prepared, digest):
        self.calls += 1
        script = self.scripts.pop(0)
        if isinstance(script, BaseException):
            return _Dead(script)
        return script


class _Dead:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __anext__(self):
        async def die():
            raise self.exc

        return die()

    def cancel(self) -> None:
        pass


def answer(backend: Scripted, *, stream: bool) -> tuple[Any, str]:
    async def go():
        prepared = Prepared(
            "chat",
            {"temperature": 0.0},
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            body={"stream": stream},
        )
        running = await backend.start(Target("legal@1", None), prepared)
        (choice,) = running.streams
        text = "".join([d.text async for d in choice.deltas()])
        return choice, text

    return asyncio.run(go())


def test_a_whole_answer_starts_over_on_another_replica():
    backend = Scripted([Script("r1", ["Hel", "lo"], die_after=1), Script("r2", ["Hi", "!"])])
    choice, _ = answer(backend, stream=False)
    assert choice.final().content == "Hi!"  # the second replica's answer, whole
    assert choice.running.placement == {
        "replica": "r2",
        "attempts": 2,
        "adapter_was_resident": True,
    }
    assert backend.retried == 1


def test_a_stream_resumes_after_the_text_already_sent():
    backend = Scripted(
        [Script("r1", ["Hel", "lo", " wor"], die_after=2), Script("r2", ["Hell", "o w", "orld"])]
    )
    choice, text = answer(backend, stream=True)
    assert text == "Hello world"  # "Hello" once, then the rest of the new answer
    assert choice.final().content == "Hello world"


def test_a_stream_whose_new_answer_differs_ends_with_an_error():
    second = Script("r2", ["No", "."])
    backend = Scripted([Script("r1", ["Yes", "!"], die_after=1), second])
    with pytest.raises(APIError, match="differs from the text already streamed") as err:
        answer(backend, stream=True)
    assert err.value.status == 502 and err.value.code == "replica_failed_mid_stream"
    assert second.cancelled  # the abandoned answer stops on its replica


def test_replicas_dying_past_the_retries_answer_503():
    backend = Scripted([ActorDiedError(), ActorDiedError()], retries=1)
    with pytest.raises(APIError, match="failed 2 times") as err:
        answer(backend, stream=False)
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert backend.calls == 2


def test_a_replica_error_is_the_clients_error_and_not_retried():
    class Refusing(Script):
        async def _events(self):
            yield {
                "event": "error",
                "status": 404,
                "headers": {},
                "error": {
                    "message": "unknown adapter 'nope'",
                    "type": "not_found_error",
                    "param": "model",
                    "code": "model_not_found",
                },
            }

    backend = Scripted([Refusing("r1", [])])
    with pytest.raises(APIError, match="unknown adapter 'nope'") as err:
        answer(backend, stream=False)
    assert err.value.status == 404 and backend.calls == 1


class TwoChoices(Script):
    """Two choices, interleaved; choice 0 finishes before the replica dies (if it does)."""

    async def _events(self):
        async for event in super()._events():
            if event["event"] != "delta":
                if event["event"] == "final":
                    yield {"event": "final", "index": 1, "final": Final("B" * 2, 3, 2, "length")}
                    return
                yield event
                continue
            yield event
            if event["delta"].text == self.texts[0]:
                yield {"event": "delta", "index": 1, "delta": Delta("B")}
                yield {"event": "final", "index": 0, "final": Final(self.texts[0], 3, 1, "stop")}


def test_each_choice_gets_its_own_events_and_a_finished_choice_survives_a_resend():
    backend = Scripted([TwoChoices("r1", ["A", "x"], die_after=1), TwoChoices("r2", ["C", "y"])])

    async def go():
        prepared = Prepared(
            "chat", {"temperature": 1.0}, max_tokens=2, n=2, messages=[], body={"stream": False}
        )
        running = await backend.start(Target("legal@1", None), prepared)
        texts = []
        for stream in running.streams:
            texts.append([d.text async for d in stream.deltas()])
        return running, texts

    running, texts = asyncio.run(go())
    first, second = (s.final() for s in running.streams)
    assert first.content == "A" and first.finish_reason == "stop"  # kept from the first replica
    assert second.content == "BB" and second.finish_reason == "length"  # from the second
    assert texts[0] == ["A"] and backend.retried == 1


def test_a_replica_error_reaches_the_client_without_the_servers_folders(lr_home):
    """A replica's error can name the registry's database file and the home folder (the
    registry's own errors do); the ingress answers with the same error, those hidden."""
    import httpx

    from loraroute.agents.server import BackgroundServer
    from loraroute.agents.server.app import create_app

    message = (
        f"no adapter named 'sha256' in the registry ({lr_home.registry_url}); "
        f"checked {lr_home.home / 'registry'}"
    )

    class Leaking(Script):
        async def _events(self):
            yield {
                "event": "error",
                "status": 404,
                "headers": {},
                "error": {"message": message, "type": "not_found_error", "code": "model_not_found"},
            }

    backend = Scripted([Leaking("r1", [])])
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with BackgroundServer(create_app(backend, open_router=False)) as srv:
        answer = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 404 and backend.calls == 1
    text = answer.json()["error"]["message"]
    assert str(lr_home.home) not in text and "registry.db" not in text
    assert text.startswith("no adapter named 'sha256' in the registry (the server's registry)")
