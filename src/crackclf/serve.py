"""``crackclf serve``: a web page and an HTTP API that show the crack map of an uploaded photo.

Why a server of our own beside ``mlflow models serve``: a phone or a script sends the
photo file as it is, and gets back what ``crackclf predict`` says of it (decode, EXIF
orientation, tiling, scale and threshold all through ``predict.predict_image``), with
a tile table in photo pixels and a crack map to look at.

- ``/``: the page (``crackclf/web/``, every script and style served from here: it works
  offline). ``POST /api/predict``: multipart parts named ``files``, one JSON object per
  file, in order. ``GET /api/model``, ``GET /api/health``; OpenAPI docs at ``/docs`` (Swagger UI
  from the swagger-ui-bundle package, not a CDN).
- The model loads once. Each file is decoded in a thread of a bounded pool, and the tiles
  of all concurrent requests go through one ``batching.SharedBatches``: batches, not one
  model call per image.
- Bad input never costs the server: a file over ``serve.max_upload_mb``, over
  ``serve.max_megapixels`` (decompression bombs: checked from the header, before any
  decoding), not an image, or truncated, gets an ``error`` in its object while the other
  files are scored; a request where nothing could be scored is a 4xx (413 when every file
  was too large, else 422); a body over the request cap is cut off with 413 while it
  streams. An unexpected failure on one file is logged and becomes that file's error, never
  a 500.
- Maps, Grad-CAM views and tile CSVs of the last ``serve.keep_results`` results stay
  downloadable under ``/api/results/ID/``; pictures are drawn on first request, so API
  clients that do not want them do not pay for them. The answers carry the unfamiliar-input
  flag when evaluate fitted one for the model (``unfamiliar.find``).

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
and those name classes imported inside ``create_app``.
"""

import asyncio
import csv
import io
import json
import logging
import secrets
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, UsageError, __version__, first_line, imaging, usable_cpus
from crackclf.process import StopRequest

WEB_DIR = Path(__file__).with_name("web")
MAP_PX = 1600  # long side of a whole photo's crack map
PATCH_MAP_PX = 454  # a single patch is drawn this large
DEFAULT_MODEL_FILE = Path("models/model.keras")
MB = 2**20
log = logging.getLogger("crackclf.serve")


# --- what the server knows -------------------------------------------------------------------

@dataclass
class Result:
    """One scored file, kept for its downloads (its bytes too: the Grad-CAM view decodes it again)."""

    prediction: object  # inference.Prediction
    threshold: float
    data: bytes = b""
    map_png: bytes | None = None
    explain_png: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Results:
    """The last ``keep`` results by id; older ones are forgotten (their links answer 404)."""

    def __init__(self, keep: int):
        self.keep, self._items, self._lock = keep, OrderedDict(), threading.Lock()

    def add(self, result: Result) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Result | None:
        with self._lock:
            return self._items.get(key)


class Scorer:
    """The loaded model, its threshold and settings: files in, answers out (no HTTP here)."""

    def __init__(self, model, threshold: float, params, info: dict, unfamiliar=None):
        from crackclf.batching import SharedBatches

        self.model, self.threshold, self.params, self.info = model, threshold, params, info
        self.unfamiliar = unfamiliar  # unfamiliar.Scorer, or None: answers carry no flag
        self.batches = SharedBatches(model, params.predict.batch_size, features=unfamiliar is not None)
        self._gradcam, self._gradcam_lock = None, threading.Lock()
        self.pool = ThreadPoolExecutor(max(4, 2 * usable_cpus()), thread_name_prefix="crackclf-decode")
        self.results = Results(params.serve.keep_results)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.batches.close()

    def score(self, data: bytes, name: str) -> dict:
        """One file's answer (in a pool thread): its prediction, or an ``error``."""
        from crackclf.predict import predict_image

        try:
            check_pixels(data, name, self.params.serve.max_megapixels)
            pred = predict_image(self.batches, data, name, self.threshold, self.params, preview_px=MAP_PX,
                                 scorer=self.unfamiliar)
        except imaging.ImageError as err:
            return error_answer(name, err.detail)
        except Exception as err:  # noqa: BLE001 - one bad file must not cost the request or the server
            log.exception("%s: failed", name)
            return error_answer(name, f"could not be scored ({first_line(err)})")
        key = self.results.add(Result(pred, self.threshold, data))
        return answer(pred, self.threshold, key, explain=bool(self.info.get("explain")))

    def explain_png(self, result: Result) -> bytes:
        """The Grad-CAM view of a result (PNG), drawn on first request: crack tiles' heat maps on the photo."""
        from crackclf import explain
        from crackclf.predict import decode

        with result.lock:
            if result.explain_png is None:
                cfg, pred = self.params.predict, result.prediction
                d = decode(result.data, self.model.size, cfg.tile_size, cfg.stride, preview_px=MAP_PX,
                           photo_scale=cfg.photo_scale)
                table = pred.tile_table
                crack = np.flatnonzero(table.probabilities >= result.threshold)
                cams = np.zeros((0, self.model.size, self.model.size), np.float32)
                if len(crack):
                    with self._gradcam_lock:  # one set of gradients at a time; Keras loads on first use
                        if self._gradcam is None:
                            explain.check_backend()
                            self._gradcam = explain.GradCam(self.model.keras_net())
                        cams = self._gradcam(d.tiles[crack])
                heat = explain.photo_heat(cams, table.boxes[crack], table.probabilities[crack], pred.image_size,
                                          d.preview.shape)
                out = io.BytesIO()
                explain_image(d.preview, heat, pred, result.threshold).save(out, "PNG", compress_level=3)
                result.explain_png = out.getvalue()
            return result.explain_png


def check_pixels(data: bytes, name: str, max_megapixels: float) -> None:
    """Refuse an image larger than ``max_megapixels`` from its header, before decoding a pixel:
    a small file can hold a huge image (a decompression bomb)."""
    from PIL import Image

    limit = max_megapixels * 1e6
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
    except Image.DecompressionBombError:  # past Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
        raise imaging.ImageError(name, f"image too large (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                       f"megapixels; serve.max_megapixels is {max_megapixels:g})") from None
    except Exception:  # noqa: BLE001 - not an image: decoding says so, in the usual words
        return
    if width * height > limit:
        raise imaging.ImageError(name, f"image too large ({width}x{height} pixels, "
                                       f"{width * height / 1e6:.0f} megapixels; serve.max_megapixels is "
                                       f"{max_megapixels:g})")


ANSWER_KEYS = ("name", "probability", "label", "threshold", "tiles", "crack_tiles", "unfamiliar",
               "width", "height", "whole_photo", "unfamiliar_tiles", "tile_table", "map", "csv", "explain", "error")


def error_answer(name: str, message: str) -> dict:
    return {**dict.fromkeys(ANSWER_KEYS), "name": name, "error": message}


def answer(pred, threshold: float, key: str, explain: bool = False) -> dict:
    """The JSON object of one scored file (see ``ANSWER_KEYS``); tiles in photo pixels."""
    table = pred.tile_table
    unfamiliar = getattr(pred, "unfamiliar", None)
    tile_unfamiliar = getattr(table, "unfamiliar", None)
    rows = []
    for i, ((x, y, w, h), p) in enumerate(zip(table.boxes.tolist(), table.probabilities.tolist())):
        row = {"x": x, "y": y, "width": w, "height": h, "probability": round(p, 6)}
        if tile_unfamiliar is not None:
            row["unfamiliar"] = bool(tile_unfamiliar[i])
        rows.append(row)
    return {
        "name": pred.path, "probability": round(pred.probability, 6), "label": pred.label,
        "threshold": threshold, "tiles": pred.tiles, "crack_tiles": pred.crack_tiles,
        "unfamiliar": None if unfamiliar is None else bool(unfamiliar),
        "width": pred.image_size[0], "height": pred.image_size[1], "whole_photo": pred.whole_photo,
        "unfamiliar_tiles": getattr(pred, "unfamiliar_tiles", None),
        "tile_table": rows, "map": f"/api/results/{key}/map.png", "csv": f"/api/results/{key}/tiles.csv",
        "explain": f"/api/results/{key}/explain.png" if explain else None, "error": None,
    }


# --- pictures and tables of a result ---------------------------------------------------------

def map_image(pred, threshold: float):
    """The photo (grey, as the model saw it) with a translucent heat map of crack probability:
    overlapping tiles averaged per pixel, crack tiles outlined, unfamiliar tiles hatched grey."""
    from PIL import Image, ImageDraw

    width, height = pred.image_size
    base = Image.fromarray(pred.preview) if pred.preview is not None else Image.new("L", (width, height), 128)
    long_side = MAP_PX if pred.whole_photo else PATCH_MAP_PX
    scale = long_side / max(base.size)
    shown = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    base = base.resize(shown, Image.Resampling.LANCZOS if scale > 1 else imaging.RESAMPLE).convert("RGB")
    sx, sy = shown[0] / width, shown[1] / height
    table = pred.tile_table
    boxes = [(round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)) for x, y, w, h in table.boxes]
    total = np.zeros(shown[::-1], np.float32)
    count = np.zeros(shown[::-1], np.float32)
    for (x0, y0, x1, y1), p in zip(boxes, table.probabilities):
        total[y0:y1, x0:x1] += p
        count[y0:y1, x0:x1] += 1
    heat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    alpha = np.where(heat >= threshold, 0.15 + 0.3 * heat, 0.3 * heat ** 2)  # the photo shows through; faint below
    red = np.array([230, 20, 0], np.float32)
    pixels = np.asarray(base, np.float32) * (1 - alpha[..., None]) + red * alpha[..., None]
    img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    line = max(2, round(long_side / 500))
    unfamiliar = getattr(table, "unfamiliar", None)
    for i, ((x0, y0, x1, y1), p) in enumerate(zip(boxes, table.probabilities)):
        if unfamiliar is not None and unfamiliar[i]:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(90, 90, 110, 110))
            for d in range(-(y1 - y0), x1 - x0, max(6, line * 5)):  # hatching: "answers here are unreliable"
                draw.line((x0 + max(d, 0), y0 + max(-d, 0), x0 + min(x1 - x0, d + y1 - y0), y0 + min(y1 - y0, x1 - x0 - d)),
                          fill=(255, 255, 255, 120), width=1)
        if p >= threshold:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 40, 0, 230), width=line)
    return img


def explain_image(preview: np.ndarray, heat: np.ndarray, pred, threshold: float):
    """The photo in grey with the Grad-CAM heat (0..1 at the preview's pixels) in yellow to red."""
    from PIL import Image, ImageDraw

    long_side = MAP_PX if pred.whole_photo else PATCH_MAP_PX
    base = Image.fromarray(preview)
    scale = long_side / max(base.size)
    shown = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    base = np.asarray(base.resize(shown, Image.Resampling.LANCZOS if scale > 1 else imaging.RESAMPLE).convert("RGB"),
                      np.float32)
    h = np.asarray(Image.fromarray(np.asarray(heat, np.float32), "F").resize(shown, Image.Resampling.BILINEAR))
    h = np.clip(h, 0, 1)[..., None]
    colour = np.concatenate([np.full_like(h, 255), 235 * (1 - h), np.zeros_like(h)], axis=2)  # yellow -> red
    alpha = 0.75 * np.sqrt(h)
    img = Image.fromarray(np.clip(base * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    width, height = pred.image_size
    sx, sy = shown[0] / width, shown[1] / height
    for (x, y, w, hgt), p in zip(pred.tile_table.boxes, pred.tile_table.probabilities):
        if p >= threshold:
            draw.rectangle((round(x * sx), round(y * sy), round((x + w) * sx) - 1, round((y + hgt) * sy) - 1),
                           outline=(255, 255, 255, 140), width=1)
    return img


def map_png(result: Result) -> bytes:
    with result.lock:  # drawn once, whoever asks first
        if result.map_png is None:
            out = io.BytesIO()
            map_image(result.prediction, result.threshold).save(out, "PNG", compress_level=3)
            result.map_png = out.getvalue()
            result.prediction.preview = None  # the PNG is all the map needs from now on
        return result.map_png


def tiles_csv(result: Result) -> bytes:
    """The same rows as ``crackclf predict --tiles``."""
    from crackclf.inference import TILE_FIELDS

    pred = result.prediction
    out = io.StringIO()
    w = csv.DictWriter(out, TILE_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(pred.tile_table.rows(Path(pred.path).name, result.threshold))
    return out.getvalue().encode()


# --- the web application ---------------------------------------------------------------------

def create_app(scorer: Scorer):
    """The FastAPI application around ``scorer``: page, API, downloads."""
    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    cfg = scorer.params.serve
    max_bytes = int(cfg.max_upload_mb * MB)
    app = FastAPI(title="crackclf", version=__version__, docs_url=None, redoc_url=None,
                  description="Crack maps of concrete photos: upload photos, get crack probabilities, "
                              "tile tables in photo pixels and map pictures.")
    app.add_middleware(BodyLimit, max_bytes=request_cap(cfg), path="/api/predict")
    add_docs(app)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/api/health")
    def health() -> dict:
        """Up, with its model loaded."""
        return {"status": "ok", "model": scorer.info.get("model")}

    @app.get("/api/model")
    def model_info() -> dict:
        """The model that answers: name and version (or file), threshold, input size, training run."""
        return scorer.info

    @app.post("/api/predict")
    async def predict(files: list[UploadFile] = File(..., description="one or more image files")):
        """Score each file: one object per file, in order; ``error`` says why a file was not scored.

        HTTP 200 when at least one file was scored; 413 when every file was too large, 422 when
        none could be scored for another reason."""
        if len(files) > cfg.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; serve.max_files is {cfg.max_files}")
        loop = asyncio.get_running_loop()

        async def one(i: int, upload: UploadFile) -> dict:
            name = upload.filename or f"file {i + 1}"
            size = upload.size if upload.size is not None else 0
            if size > max_bytes:
                return error_answer(name, f"file too large ({size / MB:.1f} MB; "
                                          f"serve.max_upload_mb is {cfg.max_upload_mb:g})")
            data = await upload.read()
            if not data:
                return error_answer(name, "empty file")
            return await loop.run_in_executor(scorer.pool, scorer.score, data, name)

        answers = await asyncio.gather(*(one(i, f) for i, f in enumerate(files)))
        status = 200
        if all(a["error"] for a in answers):
            status = 413 if all(a["error"].startswith("file too large") for a in answers) else 422
        return JSONResponse(answers, status_code=status)

    def result_of(key: str) -> Result:
        result = scorer.results.get(key)
        if result is None:
            raise HTTPException(404, "no such result (results are kept for the last "
                                     f"{cfg.keep_results} files scored)")
        return result

    @app.get("/api/results/{key}/map.png", response_class=Response)
    async def result_map(key: str):
        """The crack map of a scored file (PNG)."""
        result = result_of(key)
        png = await asyncio.get_running_loop().run_in_executor(scorer.pool, map_png, result)
        return Response(png, media_type="image/png", headers=download_name(result, "map.png"))

    @app.get("/api/results/{key}/explain.png", response_class=Response)
    async def result_explain(key: str):
        """Where in each crack tile the model sees the crack (Grad-CAM, PNG); TensorFlow backend only."""
        result = result_of(key)
        if not scorer.info.get("explain"):
            raise HTTPException(409, "Grad-CAM needs Keras' TensorFlow backend")
        try:
            png = await asyncio.get_running_loop().run_in_executor(scorer.pool, scorer.explain_png, result)
        except CrackclfError as err:
            raise HTTPException(409, str(err)) from None
        return Response(png, media_type="image/png", headers=download_name(result, "gradcam.png"))

    @app.get("/api/results/{key}/tiles.csv", response_class=Response)
    def result_tiles(key: str):
        """The tile table of a scored file (CSV, as ``crackclf predict --tiles``)."""
        result = result_of(key)
        return Response(tiles_csv(result), media_type="text/csv", headers=download_name(result, "tiles.csv"))

    return app


def add_docs(app) -> None:
    """OpenAPI docs at /docs with Swagger UI served from here (the swagger-ui-bundle package), not a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="crackclf API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def download_name(result: Result, suffix: str) -> dict:
    stem = Path(result.prediction.path).stem or "image"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return {"Content-Disposition": f'inline; filename="{safe}-{suffix}"'}


def request_cap(cfg) -> int:
    """Bytes one request may send: every file at the size limit, plus the multipart framing."""
    return int(cfg.max_files * cfg.max_upload_mb * MB + cfg.max_files * 64 * 1024)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` to ``path`` gets 413 as soon as that is
    known (from Content-Length, or while it streams), before it fills memory or disk."""

    def __init__(self, app, max_bytes: int, path: str):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        if length > self.max_bytes:
            return await self._refuse(send)
        seen, started, refused = 0, False, False

        async def limited_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True  # answer now; the app sees a client gone and its answer is dropped
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, watched_send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"request larger than {self.max_bytes / MB:.0f} MB "
                                     "(serve.max_files x serve.max_upload_mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# --- model choice and the command ------------------------------------------------------------

def default_model(params) -> str:
    """The project's ``@champion`` when its store has one, else ``models/model.keras``."""
    from crackclf import tracking

    uri = tracking.tracking_uri()
    db = tracking.sqlite_file(uri)
    if db is not None and not db.is_file():
        return str(DEFAULT_MODEL_FILE)
    from crackclf.inference import resolve_model

    try:
        return resolve_model(f"models:/{params.train.registered_model}@champion")
    except CrackclfError:
        return str(DEFAULT_MODEL_FILE)


def model_info(spec: str, model, threshold: float, unfamiliar=None) -> dict:
    """What ``GET /api/model`` says: name and version, or the file; threshold; size; training run;
    whether answers carry the unfamiliar-input flag, and whether the Grad-CAM view is offered."""
    import os

    info: dict = {"model": spec, "name": None, "version": None, "path": None, "threshold": threshold,
                  "image_size": model.size, "training_run": None, "runtime": getattr(model, "runtime", "keras"),
                  "unfamiliar": unfamiliar is not None,
                  "unfamiliar_threshold": None if unfamiliar is None else unfamiliar.threshold,
                  "explain": os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"}
    if spec.startswith("models:/"):
        import mlflow

        name, _, version = spec.removeprefix("models:/").partition("/")
        info.update(name=name, version=version)
        try:
            info["training_run"] = mlflow.MlflowClient().get_model_version(name, version).run_id
        except Exception:  # noqa: BLE001 - the model loaded; where it was trained is a detail
            pass
    else:
        info.update(path=str(Path(spec).resolve()), name=Path(spec).name)
        run_file = Path(spec).with_name("mlflow_run.json")
        try:
            info["training_run"] = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            pass
    return info


def build(model_spec: str | None, params, threshold: float | None = None, runtime: str = "auto",
          warn=None) -> Scorer:
    """Load the model once (``None``: the default) and make the scorer the app serves."""
    from crackclf import unfamiliar
    from crackclf.inference import default_threshold, load_model, resolve_model

    warn = warn or (lambda message: print(f"crackclf serve: {message}", file=sys.stderr))
    spec = resolve_model(model_spec) if model_spec else default_model(params)
    model = load_model(spec, runtime=runtime, warn=warn)
    if threshold is None:
        threshold = default_threshold(spec, warn)
    flagger = unfamiliar.find(spec, warn)
    return Scorer(model, threshold, params, model_info(spec, model, threshold, flagger), flagger)


def main(args, params, stop: StopRequest | None = None) -> int:
    import uvicorn

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be from 0 to 1")
    host = args.host or params.serve.host
    port = params.serve.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be from 0 to 65535")
    started = time.monotonic()
    scorer = build(args.model, params, args.threshold, args.runtime)
    app = create_app(scorer)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    info = scorer.info

    async def announce():  # once the socket is bound (port 0: the port the system chose)
        while not server.started:
            await asyncio.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        print(f"crackclf serve: {info['model']} (threshold {info['threshold']:g}) loaded in "
              f"{time.monotonic() - started:.1f} s; open http://{host}:{bound}/ (API docs: /docs); "
              f"Ctrl-C stops", file=sys.stderr, flush=True)

    async def serve():
        asyncio.get_running_loop().create_task(announce())
        await server.serve()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM; uvicorn exits when it cannot bind
        pass
    finally:
        scorer.close()
    if not server.started:
        raise CrackclfError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")
    print("crackclf serve: stopped", file=sys.stderr)
    return 0
