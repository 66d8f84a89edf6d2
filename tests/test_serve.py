"""HTTP tests of serve.py on loopback (127.0.0.1) with a tiny untrained model on the CPU.
Run: `python -m pytest tests/test_serve.py -q`. Every wait is bounded: a hung server fails the test."""

import base64
import dataclasses
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import serve
import unet
from labels import LABELS, NUM_LABELS, PALETTE, load_label_map, load_label_set

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE = PROJECT / "app" / "samples" / "dress.jpg"
ORIENTATION = 0x0112  # the EXIF tag
TIMEOUT = 60          # seconds any one request may take in these tests


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(unet.model_checkpoint(unet.UNet(dataclasses.replace(unet.PRESETS["tiny"], image_size=64))), path)
    return path


@dataclasses.dataclass
class Running:
    process: subprocess.Popen
    port: int
    log: Path


def _first_line(stream, timeout: float) -> str:
    lines = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines and lines[0], f"serve.py printed no address within {timeout} s"
    return lines[0]


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`python serve.py` as users start it, on a free port; its request log in a file."""
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "serve.py", "--checkpoint", str(checkpoint), "--port", "0",
                                    "--queue_size", "3"], cwd=PROJECT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = _first_line(process.stdout, 120)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        yield Running(process, port, log)
    finally:
        process.terminate()
        process.wait(10)


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
         ) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def segment(port: int, data: bytes, content_type: str = "image/jpeg", query: str = "") -> tuple[int, dict]:
    status, _, body = call(port, "POST", "/api/segment" + query, data, {"Content-Type": content_type})
    return status, json.loads(body)


def png(field: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(field)))
    image.load()
    return image


def still_serving(running: Running) -> None:
    assert running.process.poll() is None, "the server exited"
    status, _, body = call(running.port, "GET", "/api/info")
    assert status == 200 and json.loads(body)["labels"][1]["name"] == LABELS[1]


def _jpeg(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- good requests

def test_page_static_files_and_info(server):
    status, headers, body = call(server.port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'type="file"' in body and b"/app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, kind in (("/app.js", "javascript"), ("/style.css", "text/css"), ("/samples/dress.jpg", "image/jpeg")):
        status, headers, _ = call(server.port, "GET", path)
        assert status == 200 and kind in headers["Content-Type"], path
    info = json.loads(call(server.port, "GET", "/api/info")[2])
    assert [label["name"] for label in info["labels"]] == list(LABELS)
    assert info["samples"] == ["/samples/dress.jpg", "/samples/skirt.jpg", "/samples/tee-and-trousers.jpg"]
    assert info["limits"]["max_bytes"] == 20 << 20 and "none" in info["postprocess"]


def test_a_photo_gives_a_label_map_of_its_size(server):
    status, answer = segment(server.port, SAMPLE.read_bytes())
    assert status == 200
    size = Image.open(SAMPLE).size
    assert (answer["width"], answer["height"]) == size
    labels = png(answer["label_png"])
    assert labels.mode == "P" and labels.size == size
    ids = np.asarray(labels)
    assert ids.max() < NUM_LABELS
    assert {LABELS[k] for k in np.unique(ids)} == set(answer["labels"])
    assert sum(v["pixels"] for v in answer["labels"].values()) == size[0] * size[1]
    assert all(LABELS[v["id"]] == name for name, v in answer["labels"].items())
    assert answer["label_names"] == list(LABELS) and answer["label_set"] == "deepfashion-mm"
    # the label map's palette is the label set's colours: a PNG viewer shows what the page shows
    assert answer["palette"] == PALETTE.tolist()
    assert labels.getpalette()[:3 * NUM_LABELS] == PALETTE.ravel().tolist()
    assert answer["postprocessed"] is True and "unmapped" not in answer
    overlay = png(answer["overlay_png"])
    assert overlay.size == size and overlay.mode == "RGB"
    boundary = png(answer["boundary_png"])
    assert boundary.mode == "L" and min(boundary.size) == 64  # the model's resolution
    assert answer["postprocess"] == "published" and set(answer["seconds"]) == {"decode", "model", "postprocess", "encode"}


def test_the_answer_matches_predict_py(server, checkpoint):
    """The served label map is predict.py's for the same photo (argmax: no tie-breaking doubts)."""
    _, answer = segment(server.port, SAMPLE.read_bytes(), query="?postprocess=none&overlay=0")
    backend = predict.load_backend(checkpoint, "cpu")
    photo = predict.load_photo(SAMPLE)
    model_input, valid_hw = predict.prepare_input(photo, backend)
    probs, boundary = predict.predict_batch(backend.forward, model_input[None], [valid_hw])[0]
    np.testing.assert_array_equal(np.asarray(png(answer["label_png"])), predict.label_map(probs, boundary, photo.size, "none"))
    assert "overlay_png" not in answer and answer["postprocess"] == "none" and answer["postprocessed"] is False


@pytest.mark.parametrize("kind", ["exif-rotated jpeg", "rgba png", "webp", "multipart", "octet-stream"])
def test_formats_and_ways_of_sending(server, kind):
    array = _photo(120, 80)
    if kind == "exif-rotated jpeg":  # stored landscape, shown rotated 90 degrees clockwise: 80x120 upright
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        data, content_type, size = _jpeg(array, exif=exif), "image/jpeg", (80, 120)
    elif kind == "rgba png":
        data, content_type, size = _encoded(Image.fromarray(array).convert("RGBA"), "PNG"), "image/png", (120, 80)
    elif kind == "webp":
        data, content_type, size = _encoded(Image.fromarray(array), "WEBP"), "image/webp", (120, 80)
    else:
        data, content_type, size = _jpeg(array), "application/octet-stream", (120, 80)
    if kind == "multipart":
        boundary = "----test-boundary-7f3a"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    status, answer = segment(server.port, data, content_type)
    assert status == 200, answer
    assert (answer["width"], answer["height"]) == size == png(answer["label_png"]).size


def test_postprocess_choice(server):
    for method in ("published", "regions", "none"):
        status, answer = segment(server.port, SAMPLE.read_bytes(), query=f"?postprocess={method}&overlay=0")
        assert status == 200 and answer["postprocess"] == method
    status, answer = segment(server.port, SAMPLE.read_bytes(), query="?postprocess=magic")
    assert status == 400 and "choose from published" in answer["error"]


# ---------------------------------------------------------------------------------- bad requests

@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 10000x10000 PNG of a few KB: 100 megapixels (300 MB as RGB) if it were decoded."""
    return _encoded(Image.new("1", (10_000, 10_000)), "PNG")


def _bad_inputs(bomb: bytes) -> dict[str, tuple[bytes, str, int, str]]:
    sample = SAMPLE.read_bytes()
    pickled = io.BytesIO()
    torch.save({"not": "an image"}, pickled)
    return {  # name: (body, content type, status, part of the message)
        "empty": (b"", "image/jpeg", 400, "empty"),
        "text": (b"hello, this is not a photo\n" * 40, "image/jpeg", 400, "not an image"),
        "a pickle": (pickled.getvalue(), "application/octet-stream", 400, "not an image"),
        "truncated jpeg": (sample[: len(sample) // 2], "image/jpeg", 400, "truncated"),
        "1x1": (_encoded(Image.new("RGB", (1, 1), "red"), "PNG"), "image/png", 400, "too small"),
        "10000x10000 bomb": (bomb, "image/png", 400, "decompression bomb"),
        "48 megapixels": (_encoded(Image.new("1", (8000, 6000)), "PNG"), "image/png", 400,
                          "8000x6000 is 48.0 megapixels, above --max_pixels 40000000"),
        "30 MB": (b"\xff\xd8" + bytes(30_000_000), "image/jpeg", 413, "the limit is 20 MB"),
        "wrong content type": (sample, "text/plain", 415, "is not an image"),
        "json content type": (b'{"image": "x"}', "application/json", 415, "is not an image"),
        "form without a file": (b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
                                "multipart/form-data; boundary=b", 400, "no file"),
        "1:10 strip": (_jpeg(_photo(400, 40)), "image/jpeg", 400, "long and thin"),
    }


BAD = ["empty", "text", "a pickle", "truncated jpeg", "1x1", "10000x10000 bomb", "48 megapixels", "30 MB", "wrong content type",
       "json content type", "form without a file", "1:10 strip"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gets_its_4xx_with_a_message(server, bomb, name):
    data, content_type, expected, message = _bad_inputs(bomb)[name]
    status, _, body = call(server.port, "POST", "/api/segment", data, {"Content-Type": content_type})
    answer = json.loads(body)
    assert status == expected and message in answer["error"], (status, answer)
    still_serving(server)


@pytest.mark.parametrize("path", ["/../serve.py", "/%2e%2e/serve.py", "/samples/../../serve.py", "/..%2f..%2fserve.py",
                                  "//etc/passwd", "/app/index.html", "/.git/config", "/samples/%2e%2e/%2e%2e/README.md",
                                  "/api/segment"])
def test_paths_outside_the_app_folder_are_not_found(server, path):
    status, headers, body = call(server.port, "GET", path)
    assert status == 404 and b"not found" in body and b"import" not in body
    still_serving(server)


def test_other_refusals(server):
    status, _, body = call(server.port, "POST", "/upload", b"x", {"Content-Type": "image/jpeg"})
    assert status == 404 and b"POST /api/segment" in body
    status, _, body = call(server.port, "POST", "/api/segment", b"\xff\xd8", {})  # no Content-Type
    assert status == 415 and b"no Content-Type" in body
    status, _, body = call(server.port, "DELETE", "/")
    assert status == 501
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:  # Expect: 100-continue
        raw.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: 31457280\r\nExpect: 100-continue\r\n\r\n")
        head = b""
        while len(head) < 65536 and (chunk := raw.recv(4096)):  # until the server closes
            head += chunk
    assert head.startswith(b"HTTP/1.1 413") and b"limit is 20 MB" in head  # refused before the body is sent
    still_serving(server)


# ---------------------------------------------------------------------------------- load

def _burst(port: int, data: bytes, count: int) -> list[tuple[int, dict]]:
    """count simultaneous POSTs; each thread must finish within TIMEOUT seconds (no hang)."""
    results: list = [None] * count

    def one(i: int) -> None:
        results[i] = segment(port, data, query="?overlay=0")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT + 10
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert None not in results, "a request got no answer (an exception in its thread, see the warnings)"
    return results


def test_20_concurrent_requests_complete_or_get_503(server):
    results = _burst(server.port, SAMPLE.read_bytes(), 20)
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    assert all("busy" in answer["error"] for status, answer in results if status == 503)
    assert all(answer["width"] == 375 for status, answer in results if status == 200)
    still_serving(server)


def _rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from Linux's /proc")
def test_memory_stays_bounded(server, bomb):
    sample = SAMPLE.read_bytes()
    big = _jpeg(np.tile(_photo(300, 400), (6, 6, 1)))  # 1800x2400, 4.3 megapixels
    bad = _bad_inputs(bomb)

    def round_of_load() -> None:
        _burst(server.port, sample, 20)
        for name in ("10000x10000 bomb", "30 MB", "truncated jpeg"):
            data, content_type, expected, _ = bad[name]
            assert call(server.port, "POST", "/api/segment", data, {"Content-Type": content_type})[0] == expected
        assert segment(server.port, big)[0] == 200

    round_of_load()  # first-use allocations: the model's buffers, PIL's, the allocator's pools
    resident, _ = _rss_mb(server.process.pid)
    for _ in range(3):
        round_of_load()
    after, peak = _rss_mb(server.process.pid)
    print(f"server memory: resident {resident:.0f} MB after the first round, {after:.0f} MB after three more, "
          f"peak {peak:.0f} MB")
    assert after < resident + 30, f"resident memory grew from {resident:.0f} MB to {after:.0f} MB"
    assert peak < 1500, f"peak resident memory {peak:.0f} MB"
    still_serving(server)


def test_requests_are_logged(server):
    call(server.port, "GET", "/no-such-page")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "/no-such-page" not in server.log.read_text():
        time.sleep(0.1)
    log = server.log.read_text()
    assert re.search(r'127\.0\.0\.1 "GET /no-such-page" 404 \d+ B [\d.]+ s', log)
    assert re.search(r'"POST /api/segment" 200 \d+ B [\d.]+ s \(375x550 decode', log)
    assert '"GET /../serve.py" 404' in log and "Traceback" not in log


# ---------------------------------------------------------------------------------- in-process, a slow model

class SlowModel:
    """A forward pass that waits for `gate` (at most 10 s), so tests decide when the model is busy."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.entered.set()
        self.gate.wait(10)
        b, _, h, w = inputs.shape
        return torch.zeros(b, NUM_LABELS, h, w), torch.zeros(b, h, w)


@pytest.fixture
def slow_server():
    model = SlowModel()
    backend = predict.Backend(64, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), model)
    started = []

    def start(**limits) -> serve.Server:
        segmenter = serve.Segmenter(backend, serve.Limits(**limits))
        server = serve.Server(("127.0.0.1", 0), segmenter, {"model": "slow"})
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield model, start
    model.gate.set()
    for server in started:
        server.shutdown()
        server.segmenter.stop()
        server.server_close()


def _in_thread(function, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(function(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_full_queue_answers_503_at_once(slow_server):
    model, start = slow_server
    server = start(queue_size=1)
    port = server.server_address[1]
    data = _jpeg(_photo(64, 64))
    running, first = _in_thread(segment, port, data)
    assert model.entered.wait(TIMEOUT)
    waiting, second = _in_thread(segment, port, data)
    deadline = time.monotonic() + TIMEOUT
    while server.segmenter.tasks.qsize() < 1 and time.monotonic() < deadline:  # the second holds the one place
        time.sleep(0.02)
    began = time.monotonic()
    status, answer = segment(port, data)
    assert status == 503 and "busy (1 photos are waiting)" in answer["error"]
    assert time.monotonic() - began < 5  # refused, not queued
    model.gate.set()
    for thread in (running, waiting):
        thread.join(TIMEOUT)
    assert first[0][0] == 200 and second[0][0] == 200


def test_the_time_limit_answers_503(slow_server):
    model, start = slow_server
    port = start(time_limit=0.5).server_address[1]
    began = time.monotonic()
    status, answer = segment(port, _jpeg(_photo(64, 64)))
    assert status == 503 and "time limit of 0.5 s" in answer["error"]
    assert time.monotonic() - began < 5
    model.gate.set()
    status, answer = segment(port, _jpeg(_photo(64, 64)), query="?postprocess=none&overlay=0")  # free again
    assert status == 200


def test_connections_are_bounded(slow_server):
    _, start = slow_server
    port = start(max_connections=2, socket_timeout=5).server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(2)]
    time.sleep(0.2)  # both accepted and waiting for a request line
    try:
        status, _, body = call(port, "GET", "/api/info")
        assert status == 503 and b"too many connections" in body
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and call(port, "GET", "/api/info")[0] != 200:
        time.sleep(0.1)
    assert call(port, "GET", "/api/info")[0] == 200


# ---------------------------------------------------------------------------------- label sets

def _serve_in_thread(checkpoint: Path, label_map: str | None = None):
    server = serve.start(checkpoint, serve.Limits(), port=0, label_map=label_map)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stop(server) -> None:
    server.shutdown()
    server.segmenter.stop()
    server.server_close()


def test_a_label_map_answers_in_the_mapped_set(checkpoint):
    server = _serve_in_thread(checkpoint, "atr")
    try:
        port = server.server_address[1]
        status, answer = segment(port, SAMPLE.read_bytes(), query="?postprocess=none")
        info = json.loads(call(port, "GET", "/api/info")[2])
    finally:
        _stop(server)
    mapping = load_label_map("atr")
    assert status == 200 and answer["label_map"] == mapping.name == info["label_map"]
    assert answer["label_names"] == list(mapping.target.labels) == [l["name"] for l in info["labels"]]
    assert answer["label_set"] == mapping.target.name == info["label_set"]
    ids = np.asarray(png(answer["label_png"]))
    backend = predict.load_backend(checkpoint, "cpu")
    photo = predict.load_photo(SAMPLE)
    model_input, valid_hw = predict.prepare_input(photo, backend)
    probs, boundary = predict.predict_batch(backend.forward, model_input[None], [valid_hw])[0]
    np.testing.assert_array_equal(ids, mapping.apply(predict.label_map(probs, boundary, photo.size, "none")))
    assert answer["unmapped"]["pixels"] == int((ids == 255).sum()) > 0  # the untrained model uses every label
    assert sum(v["pixels"] for v in answer["labels"].values()) + answer["unmapped"]["pixels"] == ids.size
    colours = {tuple(c) for c in answer["palette"]} | {tuple(answer["unmapped"]["color"])}
    assert len(colours) == len(answer["palette"]) + 1  # the page reads ids back from colours
    assert png(answer["overlay_png"]).size == photo.size


def test_the_checkpoints_own_label_set_names_the_answer(tmp_path):
    lip = load_label_set("lip")
    model = unet.UNet(dataclasses.replace(unet.PRESETS["tiny"], image_size=64, num_labels=len(lip)), lip)
    path = tmp_path / "lip.pt"
    torch.save(unet.model_checkpoint(model), path)
    server = _serve_in_thread(path)
    try:
        status, answer = segment(server.server_address[1], SAMPLE.read_bytes())
    finally:
        _stop(server)
    assert status == 200 and answer["label_names"] == list(lip.labels) and answer["label_set"] == lip.name
    assert np.asarray(png(answer["label_png"])).max() < len(lip)
    assert set(answer["labels"]) <= set(lip.labels)
    with pytest.raises(ValueError, match="maps from label set"):  # a DF-MM map cannot take LIP's ids
        serve.start(path, serve.Limits(), port=0, label_map="u2net")


def test_an_onnx_file_serves_the_same_labels(checkpoint, tmp_path, server):
    """--checkpoint model.onnx: onnxruntime answers as PyTorch does (the export takes ~20 s of CPU)."""
    onnx_file = tmp_path / "tiny.onnx"
    predict.export_onnx(checkpoint, onnx_file)
    onnx_server = _serve_in_thread(onnx_file)
    try:
        status, answer = segment(onnx_server.server_address[1], SAMPLE.read_bytes(), query="?postprocess=none")
    finally:
        _stop(onnx_server)
    _, reference = segment(server.port, SAMPLE.read_bytes(), query="?postprocess=none")
    assert status == 200 and answer["label_names"] == reference["label_names"]
    ids, expected = np.asarray(png(answer["label_png"])), np.asarray(png(reference["label_png"]))
    assert ids.shape == expected.shape and (ids == expected).mean() > 0.999  # float rounding may flip a tie


def test_distinct_colours():
    table = serve.distinct_colours(np.array([[1, 2, 3], [1, 2, 3], [0, 0, 0]], np.uint8))
    assert table[:3].tolist() == [[1, 2, 3], [1, 2, 4], [0, 0, 0]] and table[255].tolist() == [0, 0, 1]
    assert serve.distinct_colours(PALETTE)[:NUM_LABELS].tolist() == PALETTE.tolist()


# ---------------------------------------------------------------------------------- pieces

def test_static_files_are_the_folders_own(tmp_path):
    (tmp_path / "index.html").write_text("page")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.css").write_text("css")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / "link.txt").symlink_to(PROJECT / "serve.py")
    assert serve.static_files(tmp_path) == {"/": tmp_path / "index.html", "/index.html": tmp_path / "index.html",
                                            "/sub/a.css": tmp_path / "sub" / "a.css"}


def test_multipart_file():
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\n\r\n\x89PNG\r\n\r\n--x\r\n"
            b"--XyZ--\r\n")
    assert serve.multipart_file(body, "multipart/form-data; boundary=XyZ") == b"\x89PNG\r\n\r\n--x"
    with pytest.raises(serve.HTTPError, match="boundary"):
        serve.multipart_file(body, "multipart/form-data")


def test_without_a_checkpoint_it_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no checkpoints/tiny/model.pt here
    with pytest.raises(SystemExit) as exit:
        serve.main([])
    assert exit.value.code == 2 and "python run.py" in capsys.readouterr().err


def test_the_demo_model_is_where_python_run_py_writes_it():
    import run
    default = run.TrainConfig()
    written = Path(default.output_dir) / default.output_file_name
    assert serve.DEMO_CHECKPOINT == written == Path("checkpoints/tiny/model.pt")
