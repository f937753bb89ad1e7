"""``cellflow-rt serve`` as its clients see it: a real server process on 127.0.0.1, a free port.

One server (two models, one worker, a queue of one, small limits) answers most tests in order:
answers against ``cellflow-rt run``'s files, every bad input, the load test, disconnects. Two more
are started for the token and timeout checks and for a shutdown with requests in flight.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import crop, run_cli
from pillow_codecs import jpeg_bytes, png_bytes
from serve_helpers import ServerProcess, metric_value

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[2]
#: Settings shared by the HTTP requests and the reference ``cellflow-rt run`` (not all defaults).
QUERY = "model=nuclei_demo&diameter=17&flow_threshold=0.6&cellprob_threshold=-0.5&min_size=20"
RUN_FLAGS = ["--model", "nuclei_demo", "--diameter", "17", "--flow_threshold", "0.6", "--cellprob_threshold",
             "-0.5", "--min_size", "20"]
MAX_IMAGE_MPX = 1.1


def _tiff(array) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def _npy(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _labels(answer) -> np.ndarray:
    assert answer.status == 200, answer.text
    assert answer.headers["content-type"] == "image/tiff"
    return tifffile.imread(io.BytesIO(answer.body))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(["--model", "nuclei_demo", "--model", "cyto_demo", "--workers", "1", "--max-queue", "1",
                          "--max-image-mpx", str(MAX_IMAGE_MPX), "--timeout", "300"],
                         tmp_path_factory.mktemp("server"))
    yield proc
    status = proc.stop()
    assert status == 0, proc.log()[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Image files in each format and ``cellflow-rt run``'s outputs for them (one process)."""
    folder = tmp_path_factory.mktemp("reference")
    small, big = crop(128), crop(512)
    files = {"small.tif": _tiff(small), "small_png.png": png_bytes(small), "small_jpg.jpg": jpeg_bytes(small),
             "small_npy.npy": _npy(small), "big.tif": _tiff(big)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "out").mkdir()
    result = run_cli(["run", *files, *RUN_FLAGS, "--no_npy", "--save_tif", "--save_geojson", "--save_rois",
                      "--savedir", "out"], cwd=folder, timeout=600)
    assert result.returncode == 0, result.output
    masks = {name: tifffile.imread(folder / "out" / f"{Path(name).stem}_cp_masks.tif") for name in files}
    assert all(m.max() > 3 for m in masks.values())
    return folder, files, masks


# --------------------------------------------------------------------------------------------------
# the endpoints


def test_health_models_metrics_openapi(server):
    health = server.health()
    assert health["status"] == "ok" and health["models"] == ["nuclei_demo", "cyto_demo"]
    assert health["default_model"] == "nuclei_demo" and health["workers"] == 1 and health["max_queue"] == 1
    models = json.loads(server.request("GET", "/models").body)
    assert [m["name"] for m in models["models"]] == ["nuclei_demo", "cyto_demo"]
    assert models["models"][0]["diam_mean"] == 17.0 and models["models"][0]["default_channels"] == [0, 0]
    assert not any("path" in key or "onnx" in key for m in models["models"] for key in m)
    metrics = server.request("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("cellflow_queue_depth", "cellflow_workers_busy", "cellflow_requests_total",
                 "cellflow_request_seconds_bucket"):
        assert name in metrics.text
    spec = json.loads(server.request("GET", "/openapi.json").body)
    params = {p["name"]: p for p in spec["paths"]["/segment"]["post"]["parameters"]}
    for name in ("model", "diameter", "chan", "chan2", "flow_threshold", "cellprob_threshold", "min_size", "do_3D",
                 "stitch_threshold", "normalize", "percentile"):
        assert name in params, name
    assert params["diameter"]["schema"]["default"] == 30.0
    assert set(spec["paths"]["/segment"]["post"]["responses"]["200"]["content"]) == {
        "image/tiff", "application/geo+json", "application/zip", "application/json"}


@pytest.mark.parametrize("name,content_type", [("small.tif", "image/tiff"), ("small_png.png", "image/png"),
                                               ("small_jpg.jpg", "image/jpeg"), ("small_npy.npy", "application/x-npy"),
                                               ("small.tif", "application/octet-stream"), ("small_npy.npy", None)])
def test_tiff_answer_equals_run(server, reference, name, content_type):
    _, files, masks = reference
    answer = server.post(f"/segment?{QUERY}", files[name], content_type=content_type)
    labels = _labels(answer)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, masks[name])
    assert int(answer.headers["x-masks-count"]) == len(np.unique(labels)) - 1
    assert "network;dur=" in answer.headers["server-timing"]


def test_gzip_only_when_asked(server, reference):
    import gzip

    _, files, masks = reference
    plain = server.post(f"/segment?{QUERY}", files["small.tif"])
    assert "content-encoding" not in plain.headers
    packed = server.post(f"/segment?{QUERY}", files["small.tif"], headers={"Accept-Encoding": "gzip"})
    assert packed.status == 200 and packed.headers["content-encoding"] == "gzip"
    assert len(packed.body) < len(plain.body)
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(gzip.decompress(packed.body))), masks["small.tif"])


def test_geojson_answer_equals_run(server, reference):
    folder, files, _ = reference
    answer = server.post(f"/segment?{QUERY}", files["small.tif"], accept="application/geo+json")
    assert answer.status == 200 and answer.headers["content-type"] == "application/geo+json"
    expected = json.loads((folder / "out" / "small.geojson").read_text())
    assert json.loads(answer.body) == expected and len(expected["features"]) > 3


def test_rois_answer_equals_run(server, reference):
    folder, files, _ = reference
    answer = server.post(f"/segment?{QUERY}", files["small.tif"], accept="application/zip")
    assert answer.status == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.body)) as got, zipfile.ZipFile(folder / "small_rois.zip") as want:
        assert got.namelist() == want.namelist() and len(want.namelist()) > 3
        for name in want.namelist():
            assert got.read(name) == want.read(name), name


def test_json_answer_equals_run(server, reference):
    from cellflow_rt.serve.answers import rle_decode

    _, files, masks = reference
    answer = server.post(f"/segment?{QUERY}", files["small_png.png"], content_type="image/png",
                         accept="application/json")
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    summary = json.loads(answer.body)
    np.testing.assert_array_equal(rle_decode(summary["masks"]), masks["small_png.png"])
    assert summary["n_masks"] == masks["small_png.png"].max() and summary["diameter"] == 17.0
    assert summary["model"] == "nuclei_demo" and summary["shape"] == [128, 128]
    assert {"decode", "preprocess", "network", "dynamics"} <= set(summary["timings"])


def test_python_client(server, reference):
    from cellflow_rt.client import Client, ServiceError

    _, _, masks = reference
    client = Client(f"http://127.0.0.1:{server.port}")
    result = client.segment(crop(128), model="nuclei_demo", diameter=17, flow_threshold=0.6,
                            cellprob_threshold=-0.5, min_size=20)
    np.testing.assert_array_equal(result.masks, masks["small.tif"])
    assert result.n_masks == masks["small.tif"].max() and client.health()["status"] == "ok"
    assert [m["name"] for m in client.models()["models"]] == ["nuclei_demo", "cyto_demo"]
    with pytest.raises(ServiceError) as err:
        client.segment(crop(64), flow_treshold=1)
    assert err.value.status == 400 and "flow_threshold" in err.value.reason


def test_other_model_and_channels(server):
    """cyto_demo on an RGB image with chan=2 (green), chan2=3 (blue): the same as the Python API."""
    from cellflow_rt import models

    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[..., 1] = crop(96)
    rgb[..., 2] = crop(96)[::-1]
    answer = server.post("/segment?model=cyto_demo&chan=2&chan2=3&diameter=30", png_bytes(rgb), content_type="image/png")
    expected, _, _ = models.CellposeModel(pretrained_model="cyto_demo").eval(rgb, channels=[2, 3], diameter=30)
    np.testing.assert_array_equal(_labels(answer), expected)


# --------------------------------------------------------------------------------------------------
# bad input: a 4xx with one line, never a 500, and the server goes on


def _bad_cases():
    gray = crop(64)
    tif, png = _tiff(gray), png_bytes(gray)
    nan, inf = gray.astype(np.float32), gray.astype(np.float32)
    nan[3, 4], inf[5, 6] = np.nan, np.inf
    side = int((MAX_IMAGE_MPX * 1e6) ** 0.5) + 20
    objects = np.empty(2, object)
    objects[:] = [{"masks": 1}, "x"]
    stack = np.stack([gray, gray[::-1], gray[:, ::-1]])
    return [
        # (id, query, body, content type, accept, status, words in the reason)
        ("corrupt_tiff", "", b"II*\x00" + bytes(range(256)) * 8, "image/tiff", None, 400, "TIFF"),
        ("truncated_tiff", "", tif[: len(tif) // 2], "image/tiff", None, 400, "TIFF"),
        ("truncated_png", "", png[: len(png) // 2], "image/png", None, 400, "PNG"),
        ("corrupt_png", "", b"\x89PNG\r\n\x1a\n" + b"garbage!" * 50, "image/png", None, 400, "PNG"),
        ("truncated_jpeg", "", jpeg_bytes(gray)[:400], "image/jpeg", None, 400, "JPEG"),
        ("not_an_image", "", b"this is not an image\n" * 50, "application/octet-stream", None, 415, "signature"),
        ("text_content_type", "", tif, "text/plain", None, 415, "text/plain"),
        ("wrong_content_type", "", tif, "image/png", None, 415, "TIFF"),
        ("empty_body", "", b"", "image/tiff", None, 400, "empty"),
        ("nan", "", _npy(nan), "application/x-npy", None, 400, "NaN"),
        ("inf", "", _npy(inf), "application/x-npy", None, 400, "infinite"),
        ("five_d", "", _npy(np.ones((2, 3, 4, 5, 6), np.float32)), "application/x-npy", None, 400, "5-D"),
        ("pickled_npy", "", _npy(objects, allow_pickle=True), "application/x-npy", None, 400, "pickle"),
        ("string_npy", "", _npy(np.array(["a", "b"])), "application/x-npy", None, 400, "numeric"),
        ("truncated_npy", "", _npy(gray)[:-100], "application/x-npy", None, 400, "truncated"),
        ("too_many_pixels", "", _npy(np.zeros((side, side), np.uint8)), "application/x-npy", None, 413, "limit"),
        ("png_bomb", "", png_bytes(np.zeros((side, side), np.uint8)), "image/png", None, 413, "limit"),
        ("tiny_diameter", "diameter=2", _tiff(crop(256)), "image/tiff", None, 413, "resized"),
        ("huge_niter", "niter=1000000", tif, "image/tiff", None, 413, "Euler"),
        ("unknown_model", "model=cyto3", tif, "image/tiff", None, 400, "cyto3"),
        ("model_path", "model=/etc/passwd", tif, "image/tiff", None, 400, "not served"),
        ("unknown_option", "diamter=17", tif, "image/tiff", None, 400, "diamter"),
        ("bad_value", "flow_threshold=high", tif, "image/tiff", None, 400, "flow_threshold"),
        ("nan_value", "diameter=nan", tif, "image/tiff", None, 400, "diameter"),
        ("repeated_option", "min_size=3&min_size=4", tif, "image/tiff", None, 400, "min_size"),
        ("invalid_setting", "tile_overlap=1.5", tif, "image/tiff", None, 400, "tile_overlap"),
        ("not_offered", "bsize=10000", tif, "image/tiff", None, 400, "bsize"),
        ("channel_out_of_range", "chan=3&chan2=1", _npy(np.stack([gray, gray], -1)), "application/x-npy", None,
         400, "channel"),
        ("not_acceptable", "", tif, "image/tiff", "text/html", 406, "image/tiff"),
        ("geojson_of_a_stack", "stitch_threshold=0.5&diameter=17&z_axis=0", _tiff(stack), "image/tiff",
         "application/geo+json", 406, "2D"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_is_a_4xx_with_one_line(server, case):
    _, query, body, content_type, accept, status, words = case
    answer = server.post(f"/segment?{query}", body, content_type=content_type, accept=accept)
    assert answer.status == status, answer.text
    reason = answer.text
    assert reason and "\n" not in reason.strip() and "Traceback" not in reason
    assert words.lower() in reason.lower(), reason


def test_body_over_the_limit_is_refused_before_upload(server):
    """A Content-Length over the limit gets 413 at once, without the client sending the body."""
    limit = server.health()["limits"]["max_body_bytes"]
    with server.raw() as sock:
        sock.sendall(f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                     f"Content-Length: {limit + 1}\r\n\r\n".encode())
        answer = server.read_until_closed(sock)
    assert answer.startswith("HTTP/1.1 413") and "limit" in answer


def test_unknown_paths_and_methods(server):
    assert server.request("GET", "/segment").status == 405
    missing = server.post("/segmentation", b"x")
    assert missing.status == 404 and "no such endpoint" in missing.text


def test_serves_after_bad_inputs(server, reference):
    _, files, masks = reference
    np.testing.assert_array_equal(_labels(server.post(f"/segment?{QUERY}", files["small.tif"])), masks["small.tif"])
    metrics = server.request("GET", "/metrics").text
    assert metric_value(metrics, "cellflow_requests_total", 'endpoint="/segment",status="500"') == 0
    assert metric_value(metrics, "cellflow_errors_total", 'reason="bad_image"') >= 10
    assert server.proc.poll() is None


# --------------------------------------------------------------------------------------------------
# load: a bounded queue, correct answers, no leak


def _hammer(server, body, n_clients, n_requests, answers):
    """``n_clients`` threads sending ``n_requests`` between them, back to back (no pause on a 503);
    appends (status, headers, body) to ``answers``.

    The requests are shared rather than dealt out: with a fixed share per client, the last clients
    left would have every request served in turn (a 512^2 segmentation each), for minutes.
    """
    lock = threading.Lock()
    left = [n_requests]

    def client():
        while True:
            with lock:
                if not left[0]:
                    return
                left[0] -= 1
            try:
                answer = server.post(f"/segment?{QUERY}", body, timeout=300)
                result = (answer.status, answer.headers, answer.body)
            except OSError as exc:
                result = (0, {}, repr(exc).encode())
            with lock:
                answers.append(result)

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_load_16_clients_bounded_queue_no_leak(server, reference):
    """16 concurrent clients sending 16 x 25 requests of a 512^2 image (between 50 and 50 more, 500
    in all): only 200 or 503 with Retry-After, every 200 equal to ``run``'s masks; RSS after 500
    requests within 10% of RSS after the first 50."""
    _, files, masks = reference
    body, expected = files["big.tif"], masks["big.tif"]
    answers = []
    _hammer(server, body, 16, 50, answers)
    server.wait_idle()
    rss_50 = server.rss()
    _hammer(server, body, 16, 16 * 25, answers)
    _hammer(server, body, 16, 50, answers)
    server.wait_idle()
    rss_500 = server.rss()

    assert len(answers) == 500
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, [a for a in answers if a[0] not in (200, 503)][:3]
    assert statuses.count(200) >= 3 and statuses.count(503) >= 100
    for status, headers, data in answers:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and b"busy" in data
        else:
            np.testing.assert_array_equal(tifffile.imread(io.BytesIO(data)), expected)
    assert abs(rss_500 - rss_50) <= 0.10 * rss_50, (rss_50 / 2**20, rss_500 / 2**20)


# --------------------------------------------------------------------------------------------------
# clients that go away


def test_disconnects_leave_nothing_behind(server, reference):
    _, files, masks = reference
    body = files["big.tif"]
    head = (f"POST /segment?{QUERY} HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    before = metric_value(server.request("GET", "/metrics").text, "cellflow_errors_total", 'reason="disconnected"')
    with server.raw() as sock:  # mid-upload
        sock.sendall(head + body[: len(body) // 3])
    for _ in range(2):  # whole request, gone before the answer (one runs, one waits in the queue)
        with server.raw() as sock:
            sock.sendall(head + body)
            time.sleep(0.3)
    server.wait_idle()
    after = metric_value(server.request("GET", "/metrics").text, "cellflow_errors_total", 'reason="disconnected"')
    assert after - before >= 2
    assert server.files() == server.files_at_start
    np.testing.assert_array_equal(_labels(server.post(f"/segment?{QUERY}", files["small.tif"])), masks["small.tif"])


def test_acquisition_loop_example(server):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "acquisition_loop.py"), "--url",
                             f"http://127.0.0.1:{server.port}", "--frames", "3", "--model", "nuclei_demo",
                             "--diameter", "17"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("frame ")]
    assert len(lines) == 3 and all(" cells" in ln for ln in lines), result.stdout


# --------------------------------------------------------------------------------------------------
# security and timeouts; shutdown


TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    proc = ServerProcess(["--model", "nuclei_demo", "--max-queue", "2"],
                         tmp_path_factory.mktemp("token_server"), env={"CELLFLOW_RT_TOKEN": TOKEN})
    yield proc
    proc.stop()


def test_token_required(token_server):
    body = _tiff(crop(64))
    query = "/segment?diameter=17"
    missing = token_server.post(query, body)
    assert missing.status == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert token_server.post(query, body, headers={"Authorization": "Bearer wrong"}).status == 401
    assert token_server.request("GET", "/health").status == 401
    assert token_server.request("GET", "/metrics", headers={"Authorization": "Basic " + TOKEN}).status == 401
    good = token_server.post(query, body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status == 200 and tifffile.imread(io.BytesIO(good.body)).max() > 0


def test_request_timeout_answers_504_and_the_server_recovers(token_server):
    """A request's own ``timeout`` (the server's --timeout works the same way, for every request)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    tic = time.monotonic()
    slow = token_server.post("/segment?diameter=17&timeout=0.3", _tiff(crop(512)), headers=auth)
    assert slow.status == 504 and "timeout of 0.3 s" in slow.text and time.monotonic() - tic < 30
    token_server.wait_idle(headers=auth)
    assert token_server.post("/segment?diameter=17", _tiff(crop(64)), headers=auth).status == 200


def test_slow_upload_gets_408(token_server):
    head = (f"POST /segment?diameter=17&timeout=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: image/tiff\r\nContent-Length: 10000\r\n\r\n").encode()
    with token_server.raw() as sock:
        sock.sendall(head + b"II*\x00")  # and nothing more
        answer = token_server.read_until_closed(sock)
    assert answer.startswith("HTTP/1.1 408") and "did not arrive" in answer


def test_non_loopback_address_needs_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CELLFLOW_RT_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "cellflow_rt.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2 and "--token" in result.stderr and "loopback" in result.stderr


def test_is_loopback():
    from cellflow_rt.serve.server import check_exposure, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("::")
    check_exposure("0.0.0.0", "token", False)
    check_exposure("0.0.0.0", None, True)


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_shutdown_lets_requests_in_flight_finish(tmp_path, reference):
    _, files, masks = reference
    proc = ServerProcess(["--model", "nuclei_demo", "--max-queue", "4"], tmp_path)
    answers = {}

    def send(i):
        answers[i] = proc.post(f"/segment?{QUERY}", files["big.tif"], timeout=300)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while proc.health()["queue"]["admitted"] < 3:
        assert time.monotonic() < deadline, "the three requests were not admitted"
        time.sleep(0.05)
    proc.proc.send_signal(15)
    time.sleep(0.2)
    late = proc.post(f"/segment?{QUERY}", files["small.tif"])
    assert late.status == 503 and int(late.headers["retry-after"]) >= 1 and "shutting down" in late.text
    assert proc.request("GET", "/health").status == 503
    for t in threads:
        t.join(300)
    assert proc.proc.wait(120) == 0
    assert sorted(answers) == [0, 1, 2]
    for answer in answers.values():
        np.testing.assert_array_equal(_labels(answer), masks["big.tif"])
    assert "Finished server process" in proc.log()
