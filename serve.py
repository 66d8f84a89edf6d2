"""Try a checkpoint in the browser: a demo page and a JSON API on Python's own threaded HTTP server.

    python serve.py                                   # the demo model `python run.py` trains (checkpoints/tiny/model.pt)
    python serve.py --checkpoint checkpoints/tiny/model.pt [--host 127.0.0.1] [--port 8000] [--device auto]
    python serve.py --checkpoint model.onnx           # an --export-onnx file, on onnxruntime
    python serve.py --bench [--checkpoint CKPT]       # requests/s and p50/p95 latency for 512 px photos

Open http://127.0.0.1:8000/ for the page (app/: upload or drop a photo, or pick a sample). The API:

    curl -s -X POST --data-binary @photo.jpg -H "Content-Type: image/jpeg" \\
        "http://127.0.0.1:8000/api/segment?postprocess=published" > result.json
    curl -s -F image=@photo.jpg http://127.0.0.1:8000/api/segment > result.json   # multipart works too

`POST /api/segment` takes the image's bytes (Content-Type image/* or application/octet-stream) or a
multipart form with one file. Query: postprocess = a postprocess.METHODS name or none (default
published), overlay = 1 or 0 (leave the overlay PNG out). The answer is JSON with predict.py's
<stem>.json keys (width, height, label_set, labels: per present label id, pixels, fraction;
postprocessed, postprocess; with --label_map also label_map and unmapped), label_names and palette
(every label's name and colour, by id), seconds (time per step), and three base64 PNGs: label_png
(the photo's size, indexed: pixel value = label id, 255 = unmapped; its palette is the label colours,
a colour two labels share nudged by one level so that each id has its own), overlay_png (the photo
with the colours blended at 50% and a legend, as predict.py's _overlay.jpg) and boundary_png (grey
boundary probability at the model's resolution). Errors are JSON {"error": message} with status 400
(not an image, truncated, too small, too many pixels), 411, 413 (over --max_upload_mb), 415 (content
type), 404, or 503 (queue full, --time_limit exceeded). `GET /api/info` describes the model, its
labels and the limits. Labels are the checkpoint's own label set, or --label_map's, as in predict.py.

One model sits in memory behind one worker thread; at most --queue_size uploads wait for it (the rest
get 503 at once) and at most --max_connections connections are open. Uploads are decoded by PIL
only (nothing is unpickled), in the worker; static files come only from the list of app/'s files
made at start. Every request is logged on stderr.
"""
from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import http.client
import io
import json
import logging
import mimetypes
import queue
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from PIL import Image

import postprocess
import predict
from device import M_MMAP_THRESHOLD, PRECISIONS, mallopt
from labels import IGNORE_INDEX, LabelMap, load_label_map, shipped_names

APP_DIR = Path(__file__).resolve().parent / "app"
DEMO_CHECKPOINT = Path("checkpoints/tiny/model.pt")  # where `python run.py` writes its final weights
MIN_SIDE = 32          # pixels: smaller photos hold nothing to segment
MAX_ASPECT = 4         # long side / short side: the model runs at the short side's training scale
DRAIN_LIMIT = 64 << 20  # a refused upload up to this size is read and dropped, so the client sees the answer
log = logging.getLogger("serve")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 << 20
    max_pixels: int = 40_000_000
    queue_size: int = 4          # uploads waiting for the model, beside the one it runs
    time_limit: float = 60.0     # seconds per request, from its arrival to its answer
    max_connections: int = 32
    socket_timeout: float = 20.0  # a client silent this long is dropped


class HTTPError(Exception):
    """An answer other than 200; the message is for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------- the model's worker

@dataclass
class Task:
    data: bytes
    method: str
    with_overlay: bool
    deadline: float              # time.monotonic()
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False      # the client was answered already (time limit): skip what is left
    result: dict | None = None
    error: HTTPError | None = None


class Segmenter:
    """One model in memory, one worker thread running it, at most limits.queue_size tasks waiting."""

    def __init__(self, backend: predict.Backend, limits: Limits, mapping: LabelMap | None = None) -> None:
        self.backend, self.limits, self.mapping = backend, limits, mapping
        self.label_set = mapping.target if mapping else backend.label_set  # what the answers' ids mean
        self.colours = distinct_colours(self.label_set.colours)  # (256, 3) uint8, by id
        self.slots = threading.BoundedSemaphore(limits.queue_size + 1)
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="model", daemon=True)
        self.worker.start()

    def admit(self) -> bool:
        """Take a place in the queue (release() gives it back); False when it is full."""
        return self.slots.acquire(blocking=False)

    def release(self) -> None:
        self.slots.release()

    def run(self, task: Task) -> dict:
        """Queue an admitted task and wait for it (its place is given back when the worker is done)."""
        self.tasks.put(task)
        if not task.done.wait(max(0.0, task.deadline - time.monotonic())):
            task.abandoned = True
            raise HTTPError(503, f"the photo was not done within the time limit of {self.limits.time_limit:g} s "
                                 "(the server is busy or the photo is very large); try again")
        if task.error:
            raise task.error
        return task.result

    def stop(self) -> None:
        """Let the worker finish its task and end (a daemon thread inside torch at exit can crash it)."""
        self.tasks.put(None)
        self.worker.join(self.limits.time_limit)

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                if task.abandoned or time.monotonic() > task.deadline:
                    task.error = HTTPError(503, "the time limit passed while the photo waited")
                else:
                    task.result = self.segment(task)
            except HTTPError as err:
                task.error = err
            except predict.PhotoError as err:
                task.error = HTTPError(400, photo_message(err))
            except Exception:  # a bug or an exhausted machine: the server keeps serving the others
                log.exception("segmenting failed")
                task.error = HTTPError(500, "internal error while segmenting (see the server's log)")
            finally:
                task.data = b""
                task.done.set()
                self.release()

    def segment(self, task: Task) -> dict:
        """The upload's bytes -> the API's JSON answer (see the module docstring)."""
        seconds, start = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal start
            seconds[name] = round(time.perf_counter() - start, 4)
            start = time.perf_counter()
            if task.abandoned:
                raise HTTPError(503, "abandoned after the time limit")

        photo = predict.load_photo(io.BytesIO(task.data), self.limits.max_pixels, name="upload")
        check_shape(photo.width, photo.height)
        model_input, valid_hw = predict.prepare_input(photo, self.backend)
        lap("decode")
        probs, boundary = predict.predict_batch(self.backend.forward, model_input[None], [valid_hw])[0]
        lap("model")
        labels = predict.label_map(probs, boundary, photo.size, task.method)  # (H, W) uint8, the model's ids
        if self.mapping:
            labels = self.mapping.apply(labels)  # the mapped set's ids, IGNORE_INDEX where unmapped
        lap("postprocess")
        answer = self.summary(labels, photo.size, task.method)
        answer["label_png"] = png_base64(indexed(labels, self.colours))
        answer["boundary_png"] = png_base64(Image.fromarray(np.rint(boundary * 255).astype(np.uint8)))
        if task.with_overlay:
            pixels = {v["id"]: v["pixels"] for v in answer["labels"].values()}
            answer["overlay_png"] = png_base64(predict.overlay(photo, labels, pixels, self.label_set))
        lap("encode")
        answer["seconds"] = seconds
        return answer


    def summary(self, labels: np.ndarray, size: tuple[int, int], method: str) -> dict:
        """predict.py's <stem>.json for (H, W) label ids, without "file", plus every label's name and colour."""
        names = self.label_set.labels
        counts = np.bincount(labels.ravel(), minlength=256)  # (256,)
        answer = {"width": size[0], "height": size[1], "label_set": self.label_set.name,
                  "labels": {names[k]: {"id": k, "pixels": int(n), "fraction": int(n) / labels.size}
                             for k, n in enumerate(counts[:len(names)]) if n},
                  "postprocessed": method != "none", "postprocess": method,
                  "label_names": list(names), "palette": self.colours[:len(names)].tolist()}
        if self.mapping:
            unmapped = int(counts[IGNORE_INDEX])
            answer |= {"label_map": self.mapping.name, "unmapped": {
                "id": IGNORE_INDEX, "pixels": unmapped, "fraction": unmapped / labels.size,
                "color": self.colours[IGNORE_INDEX].tolist()}}
        return answer


def distinct_colours(colours: np.ndarray) -> np.ndarray:
    """(L, 3) label colours -> (256, 3) by id: each label's, a repeat nudged in blue until it is its own
    (so the page reads ids back from colours), and for IGNORE_INDEX (unmapped) black unless taken."""
    table, seen = np.zeros((256, 3), np.uint8), set()
    for i in [*range(len(colours)), IGNORE_INDEX]:
        colour = tuple(colours[i].tolist()) if i < len(colours) else (0, 0, 0)
        while colour in seen:
            colour = (*colour[:2], (colour[2] + 1) % 256)
        seen.add(colour)
        table[i] = colour
    return table


def check_shape(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise HTTPError(400, f"the photo is {width}x{height}: too small, it needs at least {MIN_SIDE} pixels "
                             "on each side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise HTTPError(400, f"the photo is {width}x{height}: too long and thin (at most {MAX_ASPECT}:1)")


def photo_message(err: predict.PhotoError) -> str:
    if isinstance(err.__cause__, Image.UnidentifiedImageError):
        return "upload: not an image PIL can read (send a JPEG, PNG or WebP photo)"
    if isinstance(err.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"upload: refused as a possible decompression bomb ({err.__cause__})"
    return str(err)


def indexed(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """(H, W) uint8 label ids -> an indexed image: pixel value = id, palette = the label colours."""
    image = Image.fromarray(labels)  # mode L; putpalette makes it P, the ids kept
    image.putpalette(palette.tobytes())
    return image


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: a quarter of the time of 6, a little larger
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- HTTP

def static_files(folder: Path) -> dict[str, Path]:
    """URL path -> file, for the regular files under folder (no hidden ones, no links). Requests are
    answered from this table only, so no URL can reach outside the folder."""
    table = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not path.is_symlink() and not any(p.startswith(".") for p in relative.parts):
            table["/" + relative.as_posix()] = path
    if "/index.html" in table:
        table["/"] = table["/index.html"]
    return table


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The first file of a multipart/form-data body (else its field named image or file)."""
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\n\n")
    boundary = header.get_param("boundary")
    if not boundary:
        raise HTTPError(400, "multipart/form-data without a boundary")
    named = None
    for part in (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            raise HTTPError(400, "a malformed multipart/form-data body (a part without headers)")
        fields = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head.lstrip(b"\r\n"))
        if fields.get_param("filename", header="content-disposition") is not None:
            return content
        if fields.get_param("name", header="content-disposition") in ("image", "file"):
            named = content
    if named is None:
        raise HTTPError(400, "the form holds no file: send it as image=@photo.jpg (curl -F)")
    return named


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: a burst of connections waits to be accepted, not reset

    def __init__(self, address: tuple[str, int], segmenter: Segmenter, info: dict) -> None:
        self.segmenter, self.limits, self.info = segmenter, segmenter.limits, info
        self.files = static_files(APP_DIR)
        self.connections = threading.BoundedSemaphore(self.limits.max_connections)
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        if not self.connections.acquire(blocking=False):  # a thread per connection, up to the limit
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: 54\r\n\r\n"
                                b'{"error": "too many connections open; try again soon"}')
            except OSError:
                pass
            log.warning("%s refused: %d connections open", client_address[0], self.limits.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue (a refusal before the upload)
    server: Server
    server_version = "serve.py"

    def setup(self) -> None:
        self.timeout = self.server.limits.socket_timeout
        super().setup()

    def parse_request(self) -> bool:
        self.started = time.monotonic()  # each request on a kept-alive connection has its own clock
        return super().parse_request()

    # -- answers and the request log
    def reply(self, status: int, body: bytes, content_type: str, note: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:")
        if status == 503:
            self.send_header("Retry-After", "5")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        took = time.monotonic() - self.started
        log.info('%s "%s %s" %d %d B %.3f s%s', self.client_address[0], self.command, self.path[:200], status,
                 len(body), took, f" ({note})" if note else "")

    def reply_json(self, status: int, payload: dict, note: str = "") -> None:
        self.reply(status, json.dumps(payload).encode(), "application/json", note)

    def fail(self, err: HTTPError) -> None:
        if urlsplit(self.path).path.startswith("/api/"):
            self.reply_json(err.status, {"error": str(err)}, str(err))
        else:
            self.reply(err.status, (str(err) + "\n").encode(), "text/plain; charset=utf-8", str(err))

    def log_request(self, code="-", size="-") -> None:
        pass  # reply() logs each request once, with its duration

    def log_message(self, format: str, *args) -> None:
        log.warning("%s %s", self.client_address[0], format % args)  # http.server's own errors

    # -- routes
    def do_GET(self) -> None:
        route = unquote(urlsplit(self.path).path)
        if route == "/api/info":
            return self.reply_json(200, self.server.info)
        path = self.server.files.get(route)
        if path is None:
            return self.fail(HTTPError(404, f"not found: {route[:200]} (the page is at /)"))
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.reply(200, path.read_bytes(), kind + ("; charset=utf-8" if kind.startswith("text/") else ""))

    do_HEAD = do_GET

    def handle_expect_100(self) -> bool:
        try:
            self.check_upload()
        except HTTPError as err:
            self.close_connection = True  # the client was told not to send the body
            self.fail(err)
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:
        try:
            method, with_overlay, length = self.check_upload()
        except HTTPError as err:
            return self.refuse(err)
        segmenter = self.server.segmenter
        if not segmenter.admit():
            return self.refuse(HTTPError(503, f"the server is busy ({self.server.limits.queue_size} photos are "
                                              "waiting); try again in a few seconds"))
        try:
            task = Task(self.read_body(length), method, with_overlay, self.started + self.server.limits.time_limit)
            if self.headers.get_content_type() == "multipart/form-data":
                task.data = multipart_file(task.data, self.headers["Content-Type"])
            if not task.data:
                raise HTTPError(400, "the form's file is empty")
        except HTTPError as err:
            segmenter.release()
            return self.fail(err)
        try:
            answer = segmenter.run(task)  # gives the place back
        except HTTPError as err:
            return self.fail(err)
        note = f"{answer['width']}x{answer['height']} " + " ".join(f"{k} {v:.2f}" for k, v in answer["seconds"].items())
        self.reply_json(200, answer, note)

    def check_upload(self) -> tuple[str, bool, int]:
        """What can be checked before the body is read: route, query, content type, length."""
        url = urlsplit(self.path)
        if url.path != "/api/segment":
            raise HTTPError(404, f"not found: POST {url.path[:200]} (the API is POST /api/segment)")
        query = parse_qs(url.query)
        method = query.get("postprocess", ["published"])[-1]
        if method not in (*postprocess.METHODS, "none"):
            raise HTTPError(400, f"postprocess={method[:50]}: choose from {', '.join([*postprocess.METHODS, 'none'])}")
        with_overlay = query.get("overlay", ["1"])[-1] not in ("0", "false", "no")
        if "Content-Type" not in self.headers:
            raise HTTPError(415, "no Content-Type: send image/jpeg, image/png, image/webp, application/octet-stream "
                                 "or multipart/form-data")
        kind = self.headers.get_content_type()
        if not (kind.startswith("image/") or kind in ("application/octet-stream", "multipart/form-data")):
            raise HTTPError(415, f"Content-Type {kind} is not an image: send the photo's bytes as image/jpeg, "
                                 "image/png, image/webp or application/octet-stream, or a multipart/form-data form")
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise HTTPError(411, "send a Content-Length (chunked uploads are not accepted)")
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            raise HTTPError(411, "the upload needs a Content-Length header") from None
        limit = self.server.limits.max_bytes
        if length > limit:
            raise HTTPError(413, f"the upload is {length / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB")
        if length <= 0:
            raise HTTPError(400, "the upload is empty: send the photo's bytes")
        return method, with_overlay, length

    def refuse(self, err: HTTPError) -> None:
        """Answer without using the body: read and drop it first when it is small enough, so that a
        client sending it all before reading (most do) gets the answer, then close."""
        self.close_connection = True
        try:
            length = int(self.headers.get("Content-Length", 0))
        except ValueError:
            length = 0
        try:
            while 0 < length <= DRAIN_LIMIT and (chunk := self.rfile.read(min(length, 1 << 16))):
                length -= len(chunk)
        except OSError:
            pass
        self.fail(err)

    def read_body(self, length: int) -> bytes:
        body, done = bytearray(length), 0
        view = memoryview(body)
        deadline = self.started + self.server.limits.time_limit
        try:
            while done < length:
                if time.monotonic() > deadline:
                    raise HTTPError(408, "the upload took longer than the time limit")
                got = self.rfile.readinto(view[done:done + (1 << 20)])
                if not got:
                    raise HTTPError(400, f"the upload ended after {done} of {length} bytes")
                done += got
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            raise HTTPError(408, f"the upload stalled after {done} of {length} bytes") from None
        return bytes(body)


# ---------------------------------------------------------------------------------- start, bench

def model_info(checkpoint: Path, backend: predict.Backend, segmenter: Segmenter) -> dict:
    limits, label_set = segmenter.limits, segmenter.label_set
    return {"model": checkpoint.name, "image_size": backend.image_size, "label_set": label_set.name,
            "label_map": segmenter.mapping.name if segmenter.mapping else None,
            "labels": [{"id": k, "name": n, "color": segmenter.colours[k].tolist()} for k, n in enumerate(label_set.labels)],
            "postprocess": [*postprocess.METHODS, "none"], "default_postprocess": "published",
            "samples": sorted(p for p in static_files(APP_DIR) if p.startswith("/samples/")),
            "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "min_side": MIN_SIDE,
                       "max_aspect": MAX_ASPECT, "time_limit": limits.time_limit, "queue_size": limits.queue_size}}


def start(checkpoint: Path, limits: Limits, host: str = "127.0.0.1", port: int = 0, device: str = "auto",
          precision: str = "auto", label_map: str | None = None) -> Server:
    """Load the model (and the label map, a name or file as predict.py --label_map takes) and bind the
    server (port 0: any free port); serve_forever() serves."""
    backend = predict.load_backend(checkpoint, device, precision)
    mapping = load_label_map(label_map, backend.label_set) if label_map else None
    segmenter = Segmenter(backend, limits, mapping)
    return Server((host, port), segmenter, model_info(checkpoint, backend, segmenter))


def bench(server: Server, requests: int, concurrency: int) -> dict:
    """POSTs 512x512 JPEGs (the first sample, scaled) from `concurrency` clients: requests/s, latencies."""
    sample = APP_DIR / server.info["samples"][0].lstrip("/")
    with Image.open(sample) as image:
        side = min(image.size)
        photo = image.convert("RGB").crop((0, 0, side, side)).resize((512, 512), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    host, port = server.server_address[:2]

    def one(_: int) -> tuple[int, float, dict]:
        began = time.perf_counter()
        connection = http.client.HTTPConnection(host, port, timeout=server.limits.time_limit + 10)
        connection.request("POST", "/api/segment", buffer.getvalue(), {"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        took = time.perf_counter() - began
        return response.status, took, json.loads(body)["seconds"] if response.status == 200 else {}

    one(0)  # warm-up: first-call allocations
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    times = np.array([t for status, t, _ in results if status == 200])
    parts = [seconds for status, _, seconds in results if status == 200]
    return {"requests": requests, "concurrency": concurrency, "ok": len(times),
            "busy_503": sum(status == 503 for status, _, _ in results), "requests_per_s": round(len(times) / wall, 2),
            "p50_s": round(float(np.percentile(times, 50)), 3) if len(times) else None,
            "p95_s": round(float(np.percentile(times, 95)), 3) if len(times) else None,
            "server_median_s": {k: round(float(np.median([p[k] for p in parts])), 3) for k in (parts[0] if parts else ())}}


def release_large_buffers() -> None:
    """glibc's malloc raises its mmap threshold each time a large block is freed, after which photos and
    uploads come from heaps that fragment across the handler threads: resident memory crept up ~7 MB
    per 20-request burst. A fixed threshold (128 KiB, the default start) hands every large buffer back
    to the system when freed, and memory stays flat. Elsewhere (musl, macOS, Windows) nothing to do."""
    mallopt((M_MMAP_THRESHOLD, 1 << 17))   # setting it also stops the adjustment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Limits()
    parser.add_argument("--checkpoint", type=Path,
                        help=f"a run.py checkpoint or an .onnx file (default: the demo model, {DEMO_CHECKPOINT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                        "machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free one (default: 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast dtype for a PyTorch checkpoint, as predict.py (default: auto)")
    parser.add_argument("--label_map", metavar="NAME|FILE",
                        help="answer in a mapped label set, as predict.py --label_map: a shipped map ("
                             + ", ".join(shipped_names("maps")) + ") or a map file; unmapped pixels are 255")
    parser.add_argument("--max_upload_mb", type=float, default=default.max_bytes / 2**20,
                        help="larger uploads get 413 (default: %(default)g)")
    parser.add_argument("--max_pixels", type=int, default=default.max_pixels,
                        help="larger photos get 400, before they are decoded (default: %(default)d)")
    parser.add_argument("--queue_size", type=int, default=default.queue_size,
                        help="photos waiting for the model; more get 503 (default: %(default)d)")
    parser.add_argument("--time_limit", type=float, default=default.time_limit,
                        help="seconds per request, waiting included; then 503 (default: %(default)g)")
    parser.add_argument("--max_connections", type=int, default=default.max_connections,
                        help="open connections (a thread each); more get 503 (default: %(default)d)")
    parser.add_argument("--bench", action="store_true",
                        help="serve on a free port of 127.0.0.1, time POSTs of 512x512 photos, print JSON, exit")
    parser.add_argument("--bench_requests", type=int, default=30, help="requests per --bench setting (default: 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or DEMO_CHECKPOINT
    if args.checkpoint is None and not DEMO_CHECKPOINT.is_file():
        parser.error(f"no --checkpoint given and no demo model at {DEMO_CHECKPOINT}: make it with `python run.py` "
                     "(a few minutes on the CPU), or pass --checkpoint CKPT (.pt of run.py, or .onnx)")
    if min(args.queue_size, args.max_connections, args.max_pixels) < 1 or min(args.time_limit, args.max_upload_mb) <= 0:
        parser.error("--queue_size, --max_connections, --max_pixels, --time_limit and --max_upload_mb must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    release_large_buffers()
    limits = Limits(max_bytes=round(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    queue_size=args.queue_size, time_limit=args.time_limit, max_connections=args.max_connections)
    try:
        server = start(checkpoint, limits, *(("127.0.0.1", 0) if args.bench else (args.host, args.port)),
                       args.device, args.precision, args.label_map)
    except (FileNotFoundError, ValueError) as err:  # unet.CheckpointError and labels.DataError are ValueErrors
        parser.error(str(err))
    except OSError as err:
        parser.error(f"cannot listen on {args.host}:{args.port} ({err.strerror or err})")
    host, port = server.server_address[:2]
    if args.bench:
        logging.getLogger("serve").setLevel(logging.WARNING)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        figures = [bench(server, args.bench_requests, c) for c in (1, limits.queue_size)]
        print(json.dumps({"model": checkpoint.name, "photo": "512x512 JPEG", "runs": figures}, indent=2))
        server.shutdown()
        server.segmenter.stop()
        server.server_close()
        return 0
    print(f"serving {checkpoint} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.segmenter.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
