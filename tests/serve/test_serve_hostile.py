"""``cellflow-rt serve`` under hostile clients: idle connections, headers or bodies sent a byte at a
time, bodies that lie about their length, clients that leave mid-answer, a thousand bad requests,
and HTTP framing mutated by Hypothesis.

One server with lowered bounds (--timeout 3, --header-timeout 1) so that each case takes seconds.
Every test ends the same way: a well-formed request is still answered, and the metrics count what
happened.
"""
from __future__ import annotations

import io
import socket
import threading
import time

import pytest
import tifffile

from cli_helpers import crop
from serve_helpers import ServerProcess, metric_value

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

QUERY = "model=nuclei_demo&diameter=17"
TIMEOUT, HEADER_TIMEOUT = 3, 1
MB = 1 << 20


def _tiff(array) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(["--model", "nuclei_demo", "--workers", "1", "--max-queue", "2", "--timeout", str(TIMEOUT),
                          "--header-timeout", str(HEADER_TIMEOUT), "--no-access-log"],
                         tmp_path_factory.mktemp("hostile"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def image():
    return _tiff(crop(96))


def _still_serves(server, image) -> None:
    answer = server.post(f"/segment?{QUERY}", image, timeout=60)
    assert answer.status == 200 and int(answer.headers["x-masks-count"]) > 0, answer.text


def _errors(server, reason: str) -> float:
    return metric_value(server.request("GET", "/metrics").text, "cellflow_errors_total", f'reason="{reason}"')


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:  # closed while the client was still sending
        return True
    except socket.timeout:
        return False


def test_idle_and_slow_header_connections_are_closed_and_counted(server, image):
    before = _errors(server, "slow_headers")
    idle = [server.raw() for _ in range(100)]
    slow = server.raw()
    stop = threading.Event()

    def trickle():  # a request line and headers, a byte every 0.2 s: never complete within the bound
        for byte in b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n":
            if stop.is_set():
                return
            try:
                slow.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        _still_serves(server, image)  # while they hang on, others are answered
        assert all(_closed_by_server(s, HEADER_TIMEOUT + 5) for s in idle + [slow])
    finally:
        stop.set()
        for s in idle + [slow]:
            s.close()
    assert _errors(server, "slow_headers") - before >= 101
    _still_serves(server, image)


def test_body_a_byte_a_second_gets_408_within_the_timeout(server, image):
    sock = server.raw()
    sock.sendall(f"POST /segment?{QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                 f"Content-Length: {len(image)}\r\n\r\n".encode())
    tic = time.monotonic()
    sock.settimeout(0.05)
    answer = b""
    for byte in image:
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
        try:
            answer += sock.recv(4096)
        except socket.timeout:
            pass
        if answer or time.monotonic() - tic > TIMEOUT + 10:
            break
        time.sleep(0.95)
    sock.settimeout(10)
    answer = answer.decode("latin1") + ServerProcess.read_until_closed(sock)
    sock.close()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive" in answer, answer[:300]
    assert time.monotonic() - tic < TIMEOUT + 5
    _still_serves(server, image)


@pytest.mark.parametrize("declared_extra", [+1000, -200])
def test_body_that_lies_about_its_length(server, image, declared_extra):
    """Longer than sent: 408 when the timeout passes. Shorter: the body is cut (a corrupt TIFF,
    400) and the rest of the bytes are no HTTP request (400 or closed)."""
    sock = server.raw()
    sock.sendall(f"POST /segment?{QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                 f"Content-Length: {len(image) + declared_extra}\r\n\r\n".encode() + image)
    sock.settimeout(TIMEOUT + 10)
    answer = ServerProcess.read_until_closed(sock) if declared_extra > 0 else sock.recv(65536).decode("latin1")
    sock.close()
    expected = "HTTP/1.1 408" if declared_extra > 0 else "HTTP/1.1 400"
    assert answer.startswith(expected), answer[:300]
    _still_serves(server, image)


def test_clients_leaving_mid_request_or_mid_answer(server, image):
    before = _errors(server, "disconnected")
    big = _tiff(crop(256))
    for _ in range(3):  # the whole request sent, the connection closed before the answer
        sock = server.raw()
        sock.sendall(f"POST /segment?{QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                     f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
        sock.close()
    for _ in range(3):  # half the body, then gone
        sock = server.raw()
        sock.sendall(f"POST /segment?{QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                     f"Content-Length: {len(big)}\r\n\r\n".encode() + big[:len(big) // 2])
        sock.close()
    for _ in range(3):  # an answer read in part
        sock = server.raw()
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(10)
        sock.close()
    server.wait_idle(timeout=60)
    assert _errors(server, "disconnected") - before >= 3
    _still_serves(server, image)


def test_a_thousand_bad_requests_then_good_ones(server, image):
    import psutil

    process = psutil.Process(server.proc.pid)
    before_rss = process.memory_info().rss
    before = _errors(server, "bad_image") + _errors(server, "unsupported_type") + _errors(server, "bad_option")
    bad = [(b"\x89PNG\r\n\x1a\n" + b"junk" * 30, "image/png"), (b"II*\x00" + bytes(64), "image/tiff"),
           (b"hello", "text/plain"), (image, "image/tiff")]
    statuses = {}
    tic = time.monotonic()
    sock = server.raw()
    for i in range(1000):  # one keep-alive connection, as a misbehaving client would
        body, content_type = bad[i % len(bad)]
        query = "diameter=-3" if i % len(bad) == 3 else QUERY
        sock.sendall(f"POST /segment?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        status = int(head.split(b" ", 2)[1])
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while length > 0:
            length -= len(sock.recv(length))
        statuses[status] = statuses.get(status, 0) + 1
    sock.close()
    seconds = time.monotonic() - tic
    after = _errors(server, "bad_image") + _errors(server, "unsupported_type") + _errors(server, "bad_option")
    assert statuses == {400: 750, 415: 250}, statuses
    assert after - before == 1000
    _still_serves(server, image)
    growth = process.memory_info().rss - before_rss
    print(f"1000 bad requests in {seconds:.1f} s; RSS {before_rss / MB:.0f} -> "
          f"{process.memory_info().rss / MB:.0f} MB")
    assert growth < 30 * MB


# --------------------------------------------------------------------------------------------------
# HTTP framing, fuzzed

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

GOOD = (b"POST /segment?model=nuclei_demo&diameter=17 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 12\r\n\r\n\x89PNG\r\n\x1a\njunk")
framing_edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(GOOD)), st.sampled_from(
        [b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99999999999\r\n",
         b"Content-Length: -1\r\n", b"Expect: 100-continue\r\n", b"X: " + b"a" * 20000 + b"\r\n", b"0\r\n\r\n",
         b"GET / HTTP/1.1\r\n\r\n", b"%00", b"?a=1&a=2", "é".encode()]))), max_size=4)


def _apply(edits) -> bytes:
    out = bytearray(GOOD)
    for kind, at, value in edits:
        if kind == "set":
            out[at % len(out)] = value
        else:
            out[at:at] = value
    return bytes(out)


@pytest.mark.fuzz
@settings(max_examples=40 if settings().max_examples <= 300 else 300, deadline=None)
@given(edits=framing_edits)
def test_fuzz_http_framing(server, edits):
    """Whatever arrives, the answer is an HTTP status line or a closed connection, never a 500."""
    sock = server.raw()
    try:
        sock.sendall(_apply(edits))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(TIMEOUT + HEADER_TIMEOUT + 5)
        answer = ServerProcess.read_until_closed(sock)
    except (ConnectionResetError, BrokenPipeError):
        answer = ""
    finally:
        sock.close()
    statuses = [int(line.split()[1]) for line in answer.split("\r\n") if line.startswith("HTTP/1.1 ")]
    assert answer == "" or statuses, answer[:200]
    assert all(status < 500 or status == 503 for status in statuses), answer[:300]


def test_health_after_the_framing_fuzz(server, image):
    assert server.health()["status"] == "ok"
    assert metric_value(server.request("GET", "/metrics").text, "cellflow_errors_total", 'reason="internal"') == 0
    _still_serves(server, image)
