"""One model shared by many threads: their ``predict`` calls are run together in batches.

The web API (``crackclf.serve``) and the MLflow images model (``crackclf.pyfunc``) score
each image in a thread of its own (decoding releases the GIL), so that one slow photo does
not hold up the others. A model call costs about the same for 1 image as for 16, so
``SharedBatches`` queues the tiles of every thread and one worker thread runs whatever has
queued up as one batch: while it runs, the next batch gathers. No waiting is added for
the first caller: a lone request runs at once.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np


class SharedBatches:
    """A model (``size``, ``predict(images, batch_size)``) whose callers in many threads share batches.

    ``features``: run ``predict_with_features`` instead (the unfamiliar-input score needs the
    features), so that both ``predict`` and ``predict_with_features`` can be answered."""

    def __init__(self, model, batch_size: int, features: bool = False):
        self.model, self.batch_size, self.features = model, batch_size, features
        self.size = model.size
        self.source = getattr(model, "source", "")
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.calls = 0  # model calls so far: how well requests were batched

    def predict(self, images: np.ndarray, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Crack probabilities of ``images``, computed in a batch with other threads' images."""
        out = self._submit(images)
        return out[0] if self.features else out

    def predict_with_features(self, images: np.ndarray, batch_size: int | None = None,
                              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, features) of ``images``; only for ``features=True``."""
        if not self.features:
            raise RuntimeError("SharedBatches(features=False) computes no features")
        return self._submit(images)

    def _submit(self, images: np.ndarray):
        if len(images) == 0:
            return self._answer_empty()
        self._start()
        done: Future = Future()
        self._queue.put((np.asarray(images), done))
        return done.result()

    def _answer_empty(self):
        probs = np.empty(0, np.float64)
        return (probs, np.empty((0, 0), np.float32)) if self.features else probs

    def close(self) -> None:
        """Stop the worker once the calls queued so far are answered."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="crackclf-batches", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, n, stop = [first], len(first[0]), False
            while n < self.batch_size:  # everything that queued while the last batch ran
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                n += len(job[0])
            self._answer(jobs)
            if stop:
                return

    def _answer(self, jobs: list[tuple[np.ndarray, Future]]) -> None:
        try:
            images = jobs[0][0] if len(jobs) == 1 else np.concatenate([images for images, _ in jobs])
            if self.features:
                probs, feats = self.model.predict_with_features(images, self.batch_size)
            else:
                probs, feats = self.model.predict(images, self.batch_size), None
            self.calls += 1
        except BaseException as err:  # noqa: BLE001 - every waiting caller gets the model's error
            for _, done in jobs:
                done.set_exception(err)
            return
        start = 0
        for images, done in jobs:
            part = slice(start, start + len(images))
            done.set_result((probs[part], feats[part]) if self.features else probs[part])
            start += len(images)
