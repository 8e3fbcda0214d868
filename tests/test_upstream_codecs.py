"""The two HTTP/1.1 codecs agree: same events for the same bytes, same refusals.

h11 is the reference; the httptools codec must frame requests and read
responses exactly like it, however the bytes are split into reads.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep._upstream._codec import END_OF_RESPONSE, NEED_DATA, H11Codec, ResponseHead
from gatekeep._upstream._httptools_codec import HttptoolsCodec

CODECS = [H11Codec, HttptoolsCodec]

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda n: (
        n.strip("-") == n
        and n not in {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
    )
)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[bytes, bytes]], bytes]:
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 400, 404, 500, 503]))
    headers = [(n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(_token, _value), max_size=6))]
    body = b"" if status in (204, 304) else draw(st.binary(max_size=300))
    chunked = draw(st.booleans()) and status not in (204, 304)
    head = [b"HTTP/1.1 %d X\r\n" % status]
    head += [k + b": " + v + b"\r\n" for k, v in headers]
    if chunked:
        head.append(b"transfer-encoding: chunked\r\n\r\n")
        sizes = draw(st.lists(st.integers(1, 50), max_size=8))
        chunks, rest = [], body
        for size in sizes:
            if not rest:
                break
            chunks.append(rest[:size])
            rest = rest[size:]
        if rest:
            chunks.append(rest)
        wire = b"".join(head) + b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    else:
        if status not in (204, 304):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        wire = b"".join(head) + body
    return wire, status, headers, body


def _read_all(codec: H11Codec | HttptoolsCodec, wire: bytes, cuts: list[int]) -> tuple[int, list, bytes]:
    codec.send_request_head(b"GET", b"/", [(b"host", b"x")])
    codec.end_request()
    pieces, last = [], 0
    for cut in sorted({c % (len(wire) + 1) for c in cuts}):
        pieces.append(wire[last:cut])
        last = cut
    pieces.append(wire[last:])
    status, headers, body = 0, [], b""
    done = False
    for piece in pieces:
        if piece:
            codec.receive_data(piece)
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, ResponseHead):
                status, headers = event.status, [(k.lower(), v) for k, v in event.headers]
            elif event is END_OF_RESPONSE:
                done = True
                break
            else:
                body += event
        if done:
            break
    assert done
    return status, headers, body


@settings(max_examples=200, deadline=None)
@given(responses(), st.lists(st.integers(0, 2000), max_size=6))
def test_both_codecs_read_the_same_response(case: tuple, cuts: list[int]) -> None:
    wire, status, headers, body = case
    results = [_read_all(codec(), wire, cuts) for codec in CODECS]
    assert results[0] == results[1]
    got_status, got_headers, got_body = results[1]
    assert got_status == status and got_body == body
    for header in headers:
        assert header in got_headers


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-evil", b"a\r\nGET /admin HTTP/1.1")],
        [(b"x-evil", b"a\nb")],
        [(b"bad name", b"v")],
        [(b"x", b"nul\x00")],
    ],
    ids=["crlf", "lf", "space-in-name", "nul"],
)
def test_a_header_that_would_split_the_request_is_refused(codec: type, headers: list) -> None:
    c = codec()
    with pytest.raises(c.local_errors):
        c.send_request_head(b"GET", b"/", [(b"host", b"x"), *headers])


@pytest.mark.parametrize("codec", CODECS)
def test_request_framing_is_identical(codec: type) -> None:
    c = codec()
    head = c.send_request_head(b"POST", b"/p?q=1", [(b"host", b"x"), (b"transfer-encoding", b"chunked")])
    body = c.send_body(b"hello") + c.end_request()
    assert head.startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert body == b"5\r\nhello\r\n0\r\n\r\n"
    c = codec()
    c.send_request_head(b"PUT", b"/", [(b"host", b"x"), (b"content-length", b"3")])
    assert c.send_body(b"abc") == b"abc"
    assert c.end_request() == b""


@pytest.mark.parametrize("codec", CODECS)
def test_head_answer_ends_with_its_head_and_the_connection_is_reusable(codec: type) -> None:
    c = codec()
    c.send_request_head(b"HEAD", b"/", [(b"host", b"x")])
    c.end_request()
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    assert isinstance(c.next_event(), ResponseHead)
    assert c.next_event() is END_OF_RESPONSE
    assert c.is_reusable


@pytest.mark.parametrize("codec", CODECS)
def test_informational_answers_are_skipped_and_101_refused(codec: type) -> None:
    c = codec()
    c.send_request_head(b"GET", b"/", [(b"host", b"x")])
    c.end_request()
    c.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    head = c.next_event()
    assert isinstance(head, ResponseHead) and head.status == 200
    assert c.next_event() == b"ok"
    c = codec()
    c.send_request_head(b"GET", b"/", [(b"host", b"x")])
    c.end_request()
    with pytest.raises(c.remote_errors):
        c.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n")
        c.next_event()


@pytest.mark.parametrize("codec", CODECS)
def test_close_delimited_body_ends_at_eof_and_is_not_reused(codec: type) -> None:
    c = codec()
    c.send_request_head(b"GET", b"/", [(b"host", b"x")])
    c.end_request()
    c.receive_data(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert isinstance(c.next_event(), ResponseHead)
    body = b""
    while (event := c.next_event()) is not NEED_DATA:
        body += event  # type: ignore[operator]
    c.receive_data(b"")
    while (event := c.next_event()) is not END_OF_RESPONSE:
        body += event  # type: ignore[operator]
    assert body == b"all of it"
    assert not c.is_reusable


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_body_is_a_protocol_error(codec: type) -> None:
    c = codec()
    c.send_request_head(b"GET", b"/", [(b"host", b"x")])
    c.end_request()
    c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
    assert isinstance(c.next_event(), ResponseHead)
    assert c.next_event() == b"short"
    c.receive_data(b"")
    with pytest.raises(c.remote_errors):
        c.next_event()


_any_name = st.one_of(
    st.sampled_from([b"host", b"accept", b"x-request-id", b"Content-Type", b"content-length", b"connection"]),
    st.just(b"transfer-encoding"),
    st.binary(min_size=0, max_size=8),
)
_any_value = st.one_of(
    st.sampled_from([b"1", b"close", b"chunked", b"a\r\nb: c", b"x\x00"]), st.binary(max_size=12)
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_any_name, _any_value), max_size=6))
def test_httptools_request_head_checks_every_header_whatever_names_it_saw_before(headers: list) -> None:
    import re

    token = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    bad = any(not token.fullmatch(n) or re.search(rb"[\r\n\x00]", v) for n, v in headers)
    lengths = {v for n, v in headers if n.lower() == b"content-length"}
    framing_bad = any(not v.isdigit() for v in lengths) or len({int(v) for v in lengths if v.isdigit()}) > 1
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    framing_bad = framing_bad or any(v.strip().lower() != b"chunked" for v in codings)
    framing_bad = framing_bad or bool(codings and lengths)
    expected = b"GET / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    for _ in range(2):  # the second time every valid name is already known (the fast path)
        c = HttptoolsCodec()
        if bad or framing_bad:
            with pytest.raises(c.local_errors):
                c.send_request_head(b"GET", b"/", headers)
        else:
            assert c.send_request_head(b"GET", b"/", headers) == expected


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("first", [b"HEAD", b"GET"])
def test_a_reused_codec_reads_the_next_answer_whatever_came_before(codec: type, first: bytes) -> None:
    c = codec()
    for method, body in [(first, b"" if first == b"HEAD" else b"12345"), (b"GET", b"abc"), (b"GET", b"x")]:
        c.send_request_head(method, b"/", [(b"host", b"x")])
        c.end_request()
        c.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body) or 5, body))
        head = c.next_event()
        assert isinstance(head, ResponseHead) and head.status == 200
        got = b""
        while (event := c.next_event()) is not END_OF_RESPONSE:
            assert event is not NEED_DATA
            got += event
        assert got == body
        assert c.is_reusable
        c.start_next_cycle()
