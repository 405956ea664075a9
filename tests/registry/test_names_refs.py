"""Names and refs: ASCII digits only, no control characters, no trailing newline; every bad
input is a clear RegistryError (API, CLI) or a 4xx (HTTP), never a 500 or a traceback."""

from __future__ import annotations

import re

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from loraroute.cli import main
from loraroute.registry import InvalidReferenceError, Ref, parse_ref
from loraroute.registry.auth import create_token
from loraroute.registry.blobs import check_digest
from loraroute.registry.refs import check_name

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
BAD_REFS = [
    "alpha@\u00b2",  # superscript two: str.isdigit() is True, int() fails
    "alpha@\u0661",  # ARABIC-INDIC DIGIT ONE: int() reads it as 1
    "alpha@\uff11",  # FULLWIDTH DIGIT ONE
    "alpha\n",
    "alpha@1\n",
    "alpha:prod\n",
    "alpha\r",
    "al\tpha",
    "\u0430lpha",  # Cyrillic a
    "alpha@sha256:" + "a" * 64 + "\n",
]


@pytest.mark.parametrize("bad", BAD_REFS)
def test_non_ascii_digits_and_control_characters_refused(bad):
    with pytest.raises(InvalidReferenceError, match="invalid adapter reference"):
        parse_ref(bad)


@pytest.mark.parametrize("bad", ["alpha\n", "alpha\r\n", "al\x7fpha", "alpha\u2028", "\u0661"])
def test_names_refuse_control_characters_and_trailing_newline(bad):
    with pytest.raises(InvalidReferenceError, match="not allowed"):
        check_name(bad)


def test_digest_with_trailing_newline_refused():
    with pytest.raises(InvalidReferenceError, match="invalid digest"):
        check_digest("sha256:" + "a" * 64 + "\n")


def test_api_refuses_bad_names_and_alias_targets(sqlite_store, tiny_adapter):
    reg = sqlite_store
    with pytest.raises(InvalidReferenceError, match="not allowed"):
        reg.push(tiny_adapter, "alpha\n")
    reg.push(tiny_adapter, "alpha")
    with pytest.raises(InvalidReferenceError, match="not allowed"):
        reg.alias_set("alpha", "prod\n", 1)
    with pytest.raises(InvalidReferenceError):
        reg.alias_set("alpha", "prod", "\u0661")
    with pytest.raises(InvalidReferenceError):
        reg.resolve("alpha@\u00b2")
    assert reg.resolve("alpha@1").aliases == []


def test_cli_reports_bad_refs_without_traceback(sqlite_store):
    runner = CliRunner()
    for ref in ("alpha@\u00b2", "alpha@\u0661", "alpha\n"):
        r = runner.invoke(main, ["show", ref, "--registry", sqlite_store.url])
        assert r.exit_code == 1, r.output
        assert "invalid adapter reference" in r.output and "Traceback" not in r.output


@pytest.fixture
def server(sqlite_store, serve):
    from loraroute.registry.server import create_app

    token = create_token(sqlite_store, "admin")
    with serve(create_app(sqlite_store)) as srv:
        srv.headers = {"authorization": f"Bearer {token}"}
        yield srv


def test_http_bad_refs_and_names_are_4xx(server, sqlite_store, tiny_adapter):
    sqlite_store.push(tiny_adapter, "alpha")
    h = server.headers
    base = server.url + "/v1"
    with httpx.Client(headers=h, timeout=10) as c:
        for ref in ("alpha@\u00b2", "alpha@\u0661", "alpha\n", "alpha@1\n"):
            r = c.get(f"{base}/resolve", params={"ref": ref})
            assert r.status_code == 400, (ref, r.status_code, r.text)
            assert r.json()["error"] == "InvalidReferenceError"
            r = c.delete(f"{base}/versions", params={"ref": ref})
            assert r.status_code == 400, (ref, r.status_code, r.text)
        r = c.put(f"{base}/adapters/alpha/aliases/prod%0A", json={"version": 1})
        assert r.status_code == 400, r.text
        r = c.put(f"{base}/adapters/alpha/aliases/prod", json={"version": "\u0661"})
        assert r.status_code == 400, r.text
        r = c.post(f"{base}/adapters/alpha%0A/versions", json={"files": [], "meta": {}})
        assert r.status_code == 400, r.text
        for version in (0, -3, 10**12, "2", 1.5, True):
            r = c.post(
                f"{base}/adapters/alpha/versions",
                json={"files": [], "meta": {}, "version": version},
            )
            assert 400 <= r.status_code < 500, (version, r.status_code, r.text)
    assert [v.ref for v in sqlite_store.list()] == ["alpha@1"]


# -- property-based: the parser never crashes and accepts exactly the documented forms ------

names = st.from_regex(NAME, fullmatch=True).filter(lambda n: ".." not in n)
refs = st.one_of(
    names.map(Ref),
    st.builds(lambda n, v: Ref(n, version=v), names, st.integers(1, 999_999_999)),
    st.builds(lambda n, a: Ref(n, alias=a), names, names),
    st.builds(
        lambda n, h: Ref(n, digest="sha256:" + h),
        names,
        st.from_regex(re.compile(r"[0-9a-f]{64}"), fullmatch=True),
    ),
)


@given(refs)
@settings(max_examples=300, deadline=None, database=None)
def test_valid_refs_round_trip(ref):
    assert parse_ref(str(ref)) == ref


# ref-shaped text: valid pieces mixed with arbitrary characters (digits of other scripts,
# newlines, surrogates), so that the search reaches the parser's deeper branches
fragments = st.one_of(
    names,
    st.sampled_from(["@", ":", "sha256:", "1", "42", "..", "\n", "a" * 64, "\u00b2", "\u0661"]),
    st.characters(),
)
tails = st.lists(fragments, max_size=3).map("".join)
ref_like = st.one_of(
    st.text(max_size=160),
    st.tuples(names, st.sampled_from(["@", ":", ""]), tails).map("".join),
)


@given(ref_like)
@settings(max_examples=800, deadline=None, database=None)
def test_any_text_parses_or_is_refused_cleanly(text):
    try:
        ref = parse_ref(text)
    except InvalidReferenceError:
        return
    assert text.isascii() and "\n" not in text
    assert NAME.fullmatch(ref.name) and ".." not in ref.name
    if ref.version is not None:
        assert 1 <= ref.version <= 999_999_999
        assert re.fullmatch(r"[0-9]+", text.partition("@")[2])
    if ref.alias is not None:
        assert NAME.fullmatch(ref.alias)
    assert parse_ref(str(ref)) == ref


@given(st.one_of(st.text(max_size=140), st.tuples(names, tails).map("".join)))
@settings(max_examples=800, deadline=None, database=None)
def test_check_name_accepts_exactly_the_name_rule(text):
    ok = bool(NAME.fullmatch(text)) and ".." not in text
    try:
        assert check_name(text) == text and ok
    except InvalidReferenceError:
        assert not ok
