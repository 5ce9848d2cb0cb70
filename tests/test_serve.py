"""`vimdeploy serve`: a real Triton Inference Server on 127.0.0.1, driven by Triton's own clients.

The served model is the trained digits Vim (vimdeploy/assets/vim_digits.pth) and its ONNX
export: small enough for 2 CPU cores. Every answer is compared with the PyTorch reference run
in this process. The server tests need nvidia-pytriton and tritonclient (`vimdeploy[serve]`,
part of `dev`); where they cannot be installed they skip, except in CI where they fail.
"""

from __future__ import annotations

import collections
import http.client
import importlib.util
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vimdeploy import digits
from vimdeploy.errors import InputError, VimdeployError
from vimdeploy.serving.handler import Handler, ModelSpec, decode_image, probe
from vimdeploy.serving.process import ServeProcess

ATOL = 1e-4  # fp32 artifacts: server answers vs the in-process PyTorch reference
STARTUP_S = 240  # a cold start imports torch in two processes; generous for a loaded 2-core machine


def _serve_stack_missing() -> str | None:
    missing = [m for m in ("pytriton", "tritonclient.http", "tritonclient.grpc") if _find(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'vimdeploy[serve]'; Linux only)"
    return None


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


@pytest.fixture(scope="module")
def serve_stack():
    reason = _serve_stack_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the serve tests: {reason}")
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# In-process: the request handling without Triton (always runs)


@pytest.fixture(scope="module")
def reference():
    """The held-out digits, their PNG bytes, and the PyTorch engine's logits and features for them."""
    from vimdeploy.data import preprocess
    from vimdeploy.runtime import open_engine

    images, labels = digits.digit_images("test")
    images, labels = images[:64], labels[:64]  # as digits.digit_batch, for the 64 the tests use
    x = np.stack([preprocess(im, digits.CONFIG.img_size) for im in images])
    engine = open_engine(digits.WEIGHTS)
    out = engine.run(x, features=True)
    pngs = []
    for im in images[:16]:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return {
        "engine": engine,
        "x": x,
        "labels": labels,
        "logits": out["logits"],
        "features": out["features"],
        "png": pngs,
        "pil": images[:16],
    }


def test_handler_answers_each_batch_with_its_own_rows(reference):
    spec = probe(reference["engine"], features=True)
    assert spec == ModelSpec(img_size=32, num_classes=10, feature_dim=64)
    handler = Handler(reference["engine"], spec)
    x = reference["x"]
    parts = [
        handler.prepare(x[:3], None),
        handler.prepare(None, np.array(reference["png"][:2], np.object_)[:, None]),
        handler.prepare(x[5:6], None),
    ]
    answers = handler.answer(parts, features=True)
    assert [len(a["logits"]) for a in answers] == [3, 2, 1]
    expected = [reference["logits"][:3], reference["logits"][:2], reference["logits"][5:6]]
    for a, ref in zip(answers, expected):
        np.testing.assert_allclose(a["logits"], ref, atol=ATOL, rtol=0)
        order = np.argsort(-ref, axis=-1)[:, :5]
        np.testing.assert_array_equal(a["top5_indices"], order)
        probs = np.exp(ref - ref.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(a["top5_scores"], np.take_along_axis(probs, order, -1), atol=1e-5)
        assert a["top5_labels"][0, 0] == f"class {order[0, 0]}".encode()
    np.testing.assert_allclose(answers[0]["features"], reference["features"][:3], atol=ATOL, rtol=0)


def test_handler_refusals(reference):
    handler = Handler(reference["engine"], ModelSpec(img_size=32, num_classes=10))
    with pytest.raises(InputError, match="exactly one"):
        handler.prepare(None, None)
    with pytest.raises(InputError, match="exactly one"):
        handler.prepare(reference["x"][:1], np.array([[reference["png"][0]]], np.object_))
    with pytest.raises(InputError, match=r"N x 3 x 32 x 32; got 1 x 3 x 16 x 16"):
        handler.prepare(reference["x"][:1, :, :16, :16], None)
    corrupt = np.array([[reference["png"][0]], [b"\x89PNG\r\n\x1a\n not really"]], np.object_)
    with pytest.raises(InputError, match=r"image_bytes\[1\] is not a"):
        handler.prepare(None, corrupt)
    with pytest.raises(InputError, match="not a readable JPEG/PNG"):  # a PNG cut short
        decode_image(reference["png"][0][:60], 32)
    gif = io.BytesIO()
    reference["pil"][0].save(gif, format="GIF")
    with pytest.raises(InputError, match="not a JPEG/PNG image"):
        decode_image(gif.getvalue(), 32)


# ---------------------------------------------------------------------------------------------
# A real server


def Server(artifact, *options, log: Path, **kwargs) -> ServeProcess:
    """The server under test, with Triton's own log kept for failure messages; kwargs go to ServeProcess."""
    try:
        return ServeProcess(artifact, "--verbose", *options, log=log, startup_timeout_s=STARTUP_S, **kwargs)
    except VimdeployError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def server(serve_stack, tmp_path_factory):
    """The checkpoint, 2 instances, features on; stopped with SIGTERM, which must be clean."""
    s = Server(
        digits.WEIGHTS,
        "--max-batch",
        8,
        "--max-queue-delay-us",
        2000,
        "--instances",
        2,
        "--features",
        log=tmp_path_factory.mktemp("serve") / "pth.log",
    )
    yield s
    code, summary = s.stop(signal.SIGTERM)
    assert code == 0 and summary and summary["drained"] and summary["server_exit_code"] == 0, (summary, s.log_tail())


@pytest.fixture(scope="module")
def onnx_server(serve_stack, tmp_path_factory):
    from vimdeploy.export import export_onnx

    d = tmp_path_factory.mktemp("serve_onnx")
    export_onnx(digits.WEIGHTS, d / "digits.onnx", batch="dynamic", scan="plugin")
    s = Server(d / "digits.onnx", "--max-batch", 8, log=d / "onnx.log")
    yield s
    code, _ = s.stop(signal.SIGTERM)
    assert code == 0, s.log_tail()


def http_client(s: Server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(s.http, network_timeout=120.0, connection_timeout=30.0)


def grpc_client(s: Server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(s.grpc)


def infer(client, x=None, png=None, model="vim", outputs=None, **kwargs):
    """One request with either `images` or `image_bytes`, through either client module."""
    module = sys.modules[type(client).__module__.rsplit(".", 1)[0]]
    inputs = []
    if x is not None:
        inputs.append(module.InferInput("images", list(x.shape), "FP32"))
        inputs[-1].set_data_from_numpy(np.ascontiguousarray(x, np.float32))
    if png is not None:
        data = np.array(png, dtype=np.object_).reshape(-1, 1)
        inputs.append(module.InferInput("image_bytes", list(data.shape), "BYTES"))
        inputs[-1].set_data_from_numpy(data)
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, inputs, outputs=requested, **kwargs)


def check(result, reference, rows, features=False):
    logits = result.as_numpy("logits")
    np.testing.assert_allclose(logits, reference["logits"][rows], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(result.as_numpy("top5_indices")[:, 0], reference["logits"][rows].argmax(-1))
    labels = result.as_numpy("top5_labels")
    assert labels.shape == (len(logits), 5) and labels[0, 0] == f"class {logits[0].argmax()}".encode()
    if features:
        np.testing.assert_allclose(result.as_numpy("features"), reference["features"][rows], atol=ATOL, rtol=0)


def get(url: str):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_metadata_and_metrics(server):
    base = f"http://{server.http}"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/vim/ready"):
        assert get(base + path)[0] == 200, path
    status, body = get(base + "/v2/models/vim")
    meta = json.loads(body)
    assert status == 200 and {i["name"]: i["shape"] for i in meta["inputs"]} == {
        "images": [-1, 3, 32, 32],
        "image_bytes": [-1, 1],
    }
    assert [o["name"] for o in meta["outputs"]] == ["logits", "top5_indices", "top5_labels", "top5_scores", "features"]
    config = http_client(server).get_model_config("vim")
    assert config["max_batch_size"] == 8 and config["instance_group"][0]["count"] == 2
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    status, metrics = get(server.metrics)
    assert status == 200 and 'nv_inference_request_success{model="vim",version="1"}' in metrics


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_equal_the_pytorch_reference(server, reference, protocol):
    client = http_client(server) if protocol == "http" else grpc_client(server)
    start = 0
    for n in (1, 3, 8):
        rows = slice(start, start + n)
        check(infer(client, reference["x"][rows]), reference, rows, features=True)
        start += n
    # encoded images, preprocessed by the server exactly as `predict` does here
    check(infer(client, png=reference["png"][:5]), reference, slice(0, 5), features=True)
    only = infer(client, reference["x"][:2], outputs=["top5_scores"])
    assert only.as_numpy("logits") is None and only.as_numpy("top5_scores").shape == (2, 5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnx_artifact_answers_equal_the_pytorch_reference(onnx_server, reference, protocol):
    client = http_client(onnx_server) if protocol == "http" else grpc_client(onnx_server)
    check(infer(client, reference["x"][10:17]), reference, slice(10, 17))
    check(infer(client, png=reference["png"][:2]), reference, slice(0, 2))


def test_jpeg_bytes(server, reference):
    from PIL import Image

    from vimdeploy.data import preprocess

    buf = io.BytesIO()
    reference["pil"][3].save(buf, format="JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:  # the same decoder the server uses
        expected = reference["engine"].run(preprocess(im, 32)[None])["logits"]
    result = infer(http_client(server), png=[buf.getvalue()])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=ATOL, rtol=0)


def _raw_http(s: Server, path: str, body: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server, reference):
    from tritonclient.utils import InferenceServerException

    x, png = reference["x"], reference["png"]
    corrupt = b"\xff\xd8\xff\xe0 not a jpeg at all"
    bad = {  # name -> (request kwargs, part of the message)
        "wrong shape": ({"x": x[:2, :, :16, :16]}, "unexpected shape"),
        "wrong dtype": (None, "FP64"),
        "corrupt image bytes": ({"png": [png[0], corrupt]}, "image_bytes[1] is not a"),
        "truncated png": ({"png": [png[1][:50]]}, "not a readable JPEG/PNG"),
        "batch over the maximum": ({"x": x[:9]}, "batch-size must be <= 8"),
        "unknown model": ({"x": x[:1], "model": "nope"}, "unknown model"),
        "both inputs": ({"x": x[:1], "png": [png[0]]}, "exactly one"),
    }
    for protocol, client in (("http", http_client(server)), ("grpc", grpc_client(server))):
        module = sys.modules[type(client).__module__.rsplit(".", 1)[0]]
        for name, (kwargs, message) in bad.items():
            with pytest.raises(InferenceServerException) as caught:
                if kwargs is None:
                    inp = module.InferInput("images", [1, 3, 32, 32], "FP64")
                    inp.set_data_from_numpy(x[:1].astype(np.float64))
                    client.infer("vim", [inp])
                else:
                    infer(client, **kwargs)
            e = caught.value
            assert message in e.message(), (protocol, name, e.message())
            if protocol == "http":
                assert 400 <= int(e.status()) < 500, (name, e.status())
            else:
                assert e.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), (name, e.status())
            check(infer(client, x[:2]), reference, slice(0, 2))  # still serving
    # Straight onto the wire. A JSON body Triton's HTTP frontend cannot parse (not JSON, or fewer
    # values than its shape says) is answered 500 by Triton 2.51 itself, before any model code
    # runs (measured); the message is there and the server keeps serving.
    for body, message in (
        (b"{not json", "failed to parse the request JSON"),
        (
            b'{"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0, 2.0]}]}',
            "Shape does not match",
        ),
    ):
        status, text = _raw_http(server, "/v2/models/vim/infer", body)
        assert status in (400, 500) and message in json.loads(text)["error"], (status, text)
    status, text = _raw_http(
        server,
        "/v2/models/vim/infer",
        json.dumps(
            {"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.5] * 192}]}
        ).encode(),
    )
    assert status == 400 and "unexpected shape" in json.loads(text)["error"], (status, text)
    assert get(f"http://{server.http}/v2/health/ready")[0] == 200


def test_a_bad_request_does_not_fail_the_good_ones_batched_with_it(server, reference):
    """Triton batches concurrent requests into one execute(); each must get its own answer."""
    from tritonclient.utils import InferenceServerException

    x, png = reference["x"], reference["png"]
    outcomes = []

    def one(k):
        client = http_client(server)
        for i in range(6):
            if (k + i) % 3 == 0:
                try:
                    infer(client, png=[png[i], b"garbage"])
                    outcomes.append("bad request answered 200")
                except InferenceServerException as e:
                    outcomes.append("4xx" if 400 <= int(e.status()) < 500 else f"bad request got {e.status()}")
            else:
                rows = slice(k * 6 + i, k * 6 + i + 3)
                try:
                    check(infer(client, x[rows]), reference, rows)
                    outcomes.append("ok")
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    outcomes.append(f"good request failed: {e}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    counts = collections.Counter(outcomes)
    assert set(counts) == {"ok", "4xx"} and sum(counts.values()) == 48, counts


def test_load_8_clients_mixed_batches(server, reference, capsys):
    """8 concurrent clients x 25 requests (HTTP and gRPC), batches of 1-8: no failure, no wrong answer."""
    n_clients, n_requests, deadline_s = 8, 25, 60.0
    x = reference["x"]
    stats = {"latency": [], "images": 0, "errors": []}
    lock = threading.Lock()
    start = time.monotonic()

    def client_loop(k):
        client = http_client(server) if k % 2 == 0 else grpc_client(server)
        rng = np.random.default_rng(k)
        for _ in range(n_requests):
            if time.monotonic() - start > deadline_s:
                with lock:
                    stats["errors"].append("deadline passed")
                return
            rows = rng.choice(len(x), size=int(rng.integers(1, 9)), replace=False)
            t0 = time.perf_counter()
            try:
                result = infer(client, x[rows])
                elapsed = time.perf_counter() - t0
                np.testing.assert_allclose(result.as_numpy("logits"), reference["logits"][rows], atol=ATOL, rtol=0)
            except Exception as e:  # noqa: BLE001 - every failure is reported by the assert below
                with lock:
                    stats["errors"].append(f"client {k}: {type(e).__name__}: {e}"[:300])
                continue
            with lock:
                stats["latency"].append(elapsed)
                stats["images"] += len(rows)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(n_clients)]
    [t.start() for t in threads]
    [t.join(deadline_s + 30) for t in threads]
    wall = time.monotonic() - start
    lat = np.array(stats["latency"]) * 1000
    _, metrics = get(server.metrics)
    executions = _metric(metrics, "nv_inference_exec_count")
    summary = (
        f"load: {len(lat)} requests ({stats['images']} images) from {n_clients} clients in {wall:.1f} s: "
        f"{len(lat) / wall:.1f} req/s, {stats['images'] / wall:.1f} images/s, latency p50 "
        f"{np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms; server executions so far "
        f"{executions:.0f}; failures {len(stats['errors'])}"
    )
    with capsys.disabled():  # the numbers are the point: shown without -s too
        print(f"\n{summary}")
    assert not stats["errors"], stats["errors"][:5]
    assert len(lat) == n_clients * n_requests and wall < deadline_s + 30, summary
    # dynamic batching did batch: fewer engine calls than requests served in all tests so far
    assert executions < _metric(metrics, "nv_inference_request_success"), summary


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'model="vim"' in line
    )


def test_clients_that_disconnect_mid_request_do_not_hurt_the_others(server, reference):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x = reference["x"]
    body = json.dumps(
        {"inputs": [{"name": "images", "shape": [8, 3, 32, 32], "datatype": "FP32", "data": x[:8].ravel().tolist()}]}
    ).encode()
    head = (
        f"POST /v2/models/vim/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    good = []

    def steady():
        client = http_client(server)
        for i in range(30):
            rows = slice(i, i + 4)
            try:
                check(infer(client, x[rows]), reference, rows)
                good.append("ok")
            except Exception as e:  # noqa: BLE001
                good.append(f"{type(e).__name__}: {e}")

    worker = threading.Thread(target=steady)
    worker.start()
    for i in range(10):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
            # whole request, gone before the answer / half a body, gone
            s.sendall(head + (body if i % 2 == 0 else body[: len(body) // 2]))
        try:  # gRPC: the client gives up after 1 ms and cancels the call
            infer(grpcclient.InferenceServerClient(server.grpc), x[:8], client_timeout=0.001)
        except InferenceServerException:
            pass
    worker.join(120)
    assert good == ["ok"] * 30, good
    assert get(f"http://{server.http}/v2/health/ready")[0] == 200
    check(infer(http_client(server), x[:8]), reference, slice(0, 8))


def test_sigint_answers_in_flight_requests_then_stops(serve_stack, reference, tmp_path, capsys):
    """SIGINT: requests already sent are answered; new ones are refused; the process exits 0."""
    s = Server(digits.WEIGHTS, "--max-batch", 8, "--instances", 1, log=tmp_path / "server.log")
    x = reference["x"]
    records = []  # (sent, finished, outcome)
    stop = threading.Event()

    def client_loop(k):
        conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=60)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [8, 3, 32, 32],
                        "datatype": "FP32",
                        "data": x[k * 8 : (k + 1) * 8].ravel().tolist(),
                    }
                ]
            }
        ).encode()
        while not stop.is_set():
            try:
                conn.request("POST", "/v2/models/vim/infer", body=body, headers={"Content-Type": "application/json"})
                sent = time.monotonic()  # the whole request is on the wire
                response = conn.getresponse()
                data = json.loads(response.read())
                outcome = response.status
                if response.status == 200:
                    logits = np.array(data["outputs"][0]["data"], np.float32).reshape(8, 10)
                    ok = np.abs(logits - reference["logits"][k * 8 : (k + 1) * 8]).max() <= ATOL
                    outcome = 200 if ok else "wrong answer"
            except (OSError, http.client.HTTPException, ValueError) as e:
                sent, outcome = time.monotonic(), type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=60)
                time.sleep(0.05)
            records.append((sent, time.monotonic(), outcome))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    busy_by = time.monotonic() + 60
    while sum(r[2] == 200 for r in records) < 16 and time.monotonic() < busy_by:  # busy with all clients
        time.sleep(0.05)
    signalled = time.monotonic()
    code, summary = s.stop(signal.SIGINT)
    stop.set()
    [t.join(60) for t in threads]
    assert code == 0 and summary["event"] == "stopped" and summary["drained"], (summary, s.log_tail())
    # Sent (completely) before the signal, with a margin for the signal to arrive: answered, right.
    before = [r for r in records if r[0] < signalled - 0.05]
    assert before and all(r[2] == 200 for r in before), collections.Counter(r[2] for r in before)
    in_flight = [r for r in records if r[0] < signalled < r[1] and r[2] == 200]  # sent before, answered after
    with capsys.disabled():
        print(
            f"\nshutdown: {len(in_flight)} requests sent before SIGINT answered after it; sent after it: "
            f"{dict(collections.Counter(r[2] for r in records if r[0] >= signalled))}"
        )
    assert in_flight, "no request was in flight at the signal: the test proved nothing"
    assert all(r[2] != "wrong answer" for r in records)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.http_port), timeout=2).close()


def test_option_errors_are_one_line(cli, monkeypatch):
    result = cli("serve", digits.WEIGHTS, "--http-port", 9000, "--grpc-port", 9000)
    assert result.exit_code == 1 and "ports must differ" in result.output
    result = cli("serve", digits.WEIGHTS, "--max-batch", 0)
    assert result.exit_code == 1 and "--max-batch" in result.output
    result = cli("serve", digits.WEIGHTS, "--api-key-env", "VIMDEPLOY_NO_SUCH_VARIABLE")
    assert result.exit_code == 1 and "VIMDEPLOY_NO_SUCH_VARIABLE is not set" in result.output
    monkeypatch.setenv("VIMDEPLOY_SHORT_KEY", "short")
    result = cli("serve", digits.WEIGHTS, "--api-key-env", "VIMDEPLOY_SHORT_KEY")
    assert result.exit_code == 1 and "at least 16 characters" in result.output
    for option in ("--max-image-pixels", "--max-request-bytes"):
        result = cli("serve", digits.WEIGHTS, option, 0)
        assert result.exit_code == 1 and option in result.output


# ---------------------------------------------------------------------------------------------
# An ONNX made by another tool: no metadata, input `input.1`, output `output`


def _independent_preprocess(image, mean, std):
    """DeiT's evaluation transform at 32 px, written out: a square image is resized to
    int(32 / 0.875) = 36 (bicubic), center-cropped to 32, scaled to 0..1, normalised."""
    from PIL import Image

    x = np.asarray(image.convert("RGB").resize((36, 36), Image.Resampling.BICUBIC).crop((2, 2, 34, 34)), np.float32)
    return ((x / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def foreign_server(serve_stack, tmp_path_factory):
    from .test_triton import foreign_onnx

    d = tmp_path_factory.mktemp("serve_foreign")
    model = foreign_onnx(d / "cnn.onnx", classes=5)
    names = d / "names.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(5)))
    s = Server(
        model,
        *("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--labels", names, "--max-batch", 4),
        log=d / "foreign.log",
    )
    yield {"server": s, "model": model}
    code, _ = s.stop(signal.SIGTERM)
    assert code == 0, s.log_tail()


def test_an_onnx_without_metadata_needs_mean_and_std(cli, tmp_path):
    from .test_triton import foreign_onnx

    model = foreign_onnx(tmp_path / "cnn.onnx")
    result = cli("serve", model)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "carries no preprocessing" in result.output and "pass --mean and --std" in result.output
    result = cli("serve", model, "--mean", "0.5,0.5", "--std", "0.2,0.2,0.2")
    assert result.exit_code == 1 and "mean" in result.output


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_onnx_made_elsewhere_is_served(foreign_server, reference, protocol):
    """Its answers equal a plain onnxruntime.InferenceSession's on the same tensors; encoded images
    are preprocessed with the --mean / --std given; top5_labels come from --labels."""
    import onnxruntime

    s = foreign_server["server"]
    client = http_client(s) if protocol == "http" else grpc_client(s)
    session = onnxruntime.InferenceSession(str(foreign_server["model"]), providers=["CPUExecutionProvider"])
    x = reference["x"][:3]
    expected = session.run(["output"], {"input.1": x})[0]
    result = infer(client, x)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=ATOL, rtol=0)
    assert result.as_numpy("top5_labels")[0, 0] == f"kind {expected[0].argmax()}".encode()
    pixels = np.stack([_independent_preprocess(im, [0.5] * 3, [0.25] * 3) for im in reference["pil"][:2]])
    expected = session.run(["output"], {"input.1": pixels})[0]
    result = infer(client, png=reference["png"][:2])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=ATOL, rtol=0)
    meta = json.loads(get(f"http://{s.http}/v2/models/vim")[1])
    assert {i["name"]: i["shape"] for i in meta["inputs"]}["images"] == [-1, 3, 32, 32]
