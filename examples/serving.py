"""Serving: one guarded model behind a thread pool, each request's id in each of its events.

A request handler binds its request id with ``structlog.contextvars``; every gradguard
event the request makes (the model call and the post-processing) carries that id, in
gradguard's own JSON-lines file (``gradguard.configure(log_file=...)``) as in its console
lines (``gradguard.configure(console=True)``). Nothing here calls ``structlog.configure()``:
gradguard reads what is bound through ``structlog.contextvars`` either way.

The model stays in training mode between requests, as a model that is also being trained
would, with one BatchNorm frozen in eval. Concurrent requests each run it in eval under
``torch.inference_mode()``, and afterwards every flag is back where it was.

Run: python examples/serving.py
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
import torch
from torch import nn

import gradguard


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(64, 4)
        self.seen: set[tuple[bool, bool]] = set()  # (training, inference mode) in each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add((self.training, torch.is_inference_mode_enabled()))
        return self.head(self.body(x))  # type: ignore[no-any-return]


torch.manual_seed(0)
model = Classifier()  # training mode, as a freshly built model is...
model.body[1].eval()  # ...with its BatchNorm frozen: it must stay in eval afterwards
guarded = gradguard.guard(model, name="serving.model")


@gradguard.infer(name="serving.postprocess")
def postprocess(logits: torch.Tensor) -> dict[str, list[float] | list[int]]:
    scores, labels = logits.softmax(-1).max(-1)
    return {"labels": labels.tolist(), "scores": scores.tolist()}  # plain values, no tensors


served_by: dict[str, str] = {}  # request id -> the thread that served it


def handle(request_id: str, batch: torch.Tensor) -> dict[str, list[float] | list[int]]:
    """One request: everything logged while the id is bound carries it."""
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        served_by[request_id] = threading.current_thread().name
        return postprocess(guarded(batch))


requests = {f"r{i:02d}": torch.randn(1 + i % 4, 16) for i in range(16)}

# One request before the pool, with console lines on: the id appears in the line, merged
# from structlog.contextvars. Console lines go to stderr; this example shows them here.
print("one request with console lines on (gradguard.configure(console=True)):")
gradguard.configure(console=True)
with contextlib.redirect_stderr(sys.stdout):
    handle("warm-up", torch.randn(2, 16))
    gradguard.flush()  # console lines are written in batches, off the call path
gradguard.configure(console=False)

# The pool's requests go to gradguard's own JSON-lines file.
log_file = os.path.join(tempfile.mkdtemp(prefix="gradguard-serving-"), "calls.jsonl")
gradguard.configure(log_file=log_file)
try:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="serve") as pool:
        futures = {rid: pool.submit(handle, rid, batch) for rid, batch in requests.items()}
        responses = {rid: future.result() for rid, future in futures.items()}
finally:
    gradguard.configure(log_file=None)  # back to the default: nothing written per call

with open(log_file, encoding="utf-8") as f:
    events = [json.loads(line) for line in f]
by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
for event in events:
    by_request[str(event.get("request_id"))].append(event)

# Each request made two events, both with its id, both from the thread that served it.
carried = sorted(by_request) == sorted(requests) and all(
    sorted(e["target"] for e in by_request[rid]) == ["serving.model", "serving.postprocess"]
    and all(e["thread"] == served_by[rid] for e in by_request[rid])
    for rid in requests
)
print(f"\n{len(requests)} requests on {len(set(served_by.values()) - {'MainThread'})} threads")
print(f"events in the log file: {len(events)}, {len(by_request)} request ids")
print(f"every event carries the id of the request that made it: {carried}")
for rid in list(requests)[:3]:
    shown = ", ".join(f"{e['target']} ({e['mode']}, {e['thread']})" for e in by_request[rid])
    print(f"  {rid}: {shown}")

# Every forward ran in eval under inference mode; each answer is the one model.eval() +
# torch.inference_mode() gives when the requests run one at a time.
print(f"inside every forward (training, inference_mode): {sorted(model.seen)}")
with torch.inference_mode():
    frozen = model.body[1]
    model.eval()
    expected = {rid: model(batch).argmax(-1).tolist() for rid, batch in requests.items()}
    model.train()
    frozen.eval()
same = all(responses[rid]["labels"] == expected[rid] for rid in requests)
print(f"same labels as model.eval() + torch.inference_mode(), one at a time: {same}")

flags = {name or "(model)": m.training for name, m in model.named_modules()}
print(
    f"after the requests: model.training={model.training}, "
    f"frozen BatchNorm training={model.body[1].training}, "
    f"every other module training={all(v for k, v in flags.items() if k != 'body.1')}, "
    f"grad enabled={torch.is_grad_enabled()}"
)
