"""A scriptable OpenAI-compatible chat server on 127.0.0.1 (real aiohttp, real HTTP).

Tests queue behaviours (`answer`, `status`, `hang`, `drop`); each incoming
`POST /v1/chat/completions` consumes the next one, then falls back to `responder(body)` or the
default answer. The server records every request (body, headers, arrival time) and the maximum
number of requests in flight at once. It runs its own event loop in a daemon thread, so it
serves sync tests, asyncio tests and subprocesses alike.
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import Callable

from aiohttp import web


def answer(text: str, delay: float = 0.0, reasoning: str | None = None) -> dict:
  """A 200 reply with `text` as the message content (after `delay` seconds)."""
  return {"kind": "answer", "text": text, "delay": delay, "reasoning": reasoning}


def status(code: int, retry_after: float | None = None, delay: float = 0.0) -> dict:
  """An HTTP error reply (optionally with a Retry-After header, in seconds)."""
  return {"kind": "status", "code": code, "retry_after": retry_after, "delay": delay}


def hang() -> dict:
  """Never answers (until the server stops)."""
  return {"kind": "hang"}


def drop() -> dict:
  """Closes the connection without answering."""
  return {"kind": "drop"}


class OpenAITestServer:
  """Usage: `with OpenAITestServer() as server: server.push(answer('PROCESS_SCORE: 7'))`."""

  def __init__(self, default: dict | None = None,
               responder: Callable[[dict], dict] | None = None):
    self.default = default or answer("Solid work.\nPROCESS_SCORE: 7")
    self.responder = responder
    self.queue: collections.deque = collections.deque()
    self.requests: list[dict] = []
    self.in_flight = 0
    self.max_in_flight = 0
    self._lock = threading.Lock()
    self._loop: asyncio.AbstractEventLoop | None = None
    self._thread: threading.Thread | None = None
    self._release: asyncio.Event | None = None
    self.base_url = ""

  # -- scripting -------------------------------------------------------------------------------
  def push(self, *behaviours: dict) -> None:
    with self._lock:
      self.queue.extend(behaviours)

  def reset_records(self) -> None:
    with self._lock:
      self.requests.clear()
      self.max_in_flight = 0

  def _next(self, body: dict) -> dict:
    with self._lock:
      if self.queue:
        return self.queue.popleft()
    if self.responder is not None:
      return self.responder(body)
    return self.default

  # -- HTTP --------------------------------------------------------------------------------------
  async def _chat(self, request: web.Request) -> web.StreamResponse:
    body = await request.json()
    with self._lock:
      self.requests.append({"time": time.monotonic(), "body": body,
                            "headers": dict(request.headers)})
      self.in_flight += 1
      self.max_in_flight = max(self.max_in_flight, self.in_flight)
    try:
      b = self._next(body)
      if b.get("delay"):
        await asyncio.sleep(b["delay"])
      if b["kind"] == "hang":
        await self._release.wait()
        return web.Response(status=503)
      if b["kind"] == "drop":
        request.transport.abort()
        return web.Response(status=500)
      if b["kind"] == "status":
        headers = {}
        if b["retry_after"] is not None:
          headers["Retry-After"] = str(b["retry_after"])
        err = {"error": {"message": f"scripted {b['code']}", "type": "test", "code": b["code"]}}
        return web.json_response(err, status=b["code"], headers=headers)
      prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
      message = {"role": "assistant", "content": b["text"]}
      if b.get("reasoning") is not None:
        message["reasoning_content"] = b["reasoning"]
      return web.json_response({
          "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
          "created": int(time.time()), "model": body.get("model", "test"),
          "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": prompt_chars // 4,
                    "completion_tokens": len(b["text"] or "") // 4,
                    "total_tokens": prompt_chars // 4 + len(b["text"] or "") // 4}})
    finally:
      with self._lock:
        self.in_flight -= 1

  # -- lifecycle -------------------------------------------------------------------------------
  def start(self) -> "OpenAITestServer":
    ready = threading.Event()
    self._loop = asyncio.new_event_loop()

    async def boot():
      self._release = asyncio.Event()
      app = web.Application()
      app.router.add_post("/v1/chat/completions", self._chat)
      self._runner = web.AppRunner(app, shutdown_timeout=0.5)
      await self._runner.setup()
      site = web.TCPSite(self._runner, "127.0.0.1", 0)
      await site.start()
      port = site._server.sockets[0].getsockname()[1]
      self.base_url = f"http://127.0.0.1:{port}/v1"

    def run():
      asyncio.set_event_loop(self._loop)
      self._loop.run_until_complete(boot())
      ready.set()
      self._loop.run_forever()

    self._thread = threading.Thread(target=run, daemon=True, name="openai-test-server")
    self._thread.start()
    if not ready.wait(10):
      raise RuntimeError("test OpenAI server did not start")
    return self

  def stop(self) -> None:
    if self._loop is None:
      return

    async def shutdown():
      self._release.set()
      await self._runner.cleanup()

    asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(10)
    self._loop.close()
    self._loop = None

  def __enter__(self) -> "OpenAITestServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def prompt_of(body: dict) -> str:
  """The first user message of a recorded request body."""
  return body["messages"][0]["content"]


def dump(requests: list[dict]) -> str:
  return json.dumps([r["body"] for r in requests], indent=1)
