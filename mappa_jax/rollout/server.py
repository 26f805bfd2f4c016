"""Our SGLang-protocol HTTP server around the InProcessEngine (aiohttp).

The "SGLang server that hot-swaps weights from Orbax checkpoints" for CPU and TPU hosts: it
answers the subset of SGLang's HTTP API that SGLangEngine uses (docs/sglang.md), with SGLang's
reply shapes, plus `/v1/chat/completions` so it can serve as a local OpenAI-compatible coach.

Routes:
  POST /generate                  input_ids (or text, with a tokenizer), sampling_params,
                                  return_logprob; single or batched inputs
  GET  /health, /health_generate  200 when serving
  GET  /get_model_info            model_path, tokenizer_path, is_generation, weight_version
  GET  /get_weight_version
  POST /update_weights_from_disk  model_path: published version dir, Orbax checkpoint or HF
                                  dir; loads, swaps, advances weight_version
  POST /pause_generation          no new batch starts; returns once the running one finished
  POST /continue_generation
  GET  /v1/models, POST /v1/chat/completions

Differences from SGLang (documented in docs/sglang.md): pause always works in place (a running
batch completes, nothing is aborted); `stop` strings, penalties, grammars and streaming are
rejected with HTTP 400 rather than ignored.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from mappa_jax.models import hf_io
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.rollout import publish as publish_lib
from mappa_jax.rollout.engine import InProcessEngine, InProcessEngineConfig
from mappa_jax.rollout.types import Completion, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_AGENT = "default"
_UNSUPPORTED_SAMPLING = {
    # field: value that means "off" (anything else is rejected, never silently ignored)
    "stop": None, "stop_regex": None, "regex": None, "json_schema": None, "ebnf": None,
    "structural_tag": None, "logit_bias": None, "n": 1, "min_p": 0.0,
    "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
    "ignore_eos": False,
}


class BadRequest(ValueError):
  """Client error: answered with HTTP 400 and the message."""


def _error(status: int, message: str) -> web.Response:
  # SGLang's ErrorResponse shape.
  return web.json_response({"object": "error", "message": message,
                            "type": "BadRequest" if status == 400 else "InternalServerError",
                            "param": None, "code": status}, status=status)


def _int(d: dict, key: str, default: int | None, where: str) -> int | None:
  v = d.get(key, default)
  if v is None:
    return default
  if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
    raise BadRequest(f"{where}.{key}={v!r} must be an integer")
  return int(v)


def _float(d: dict, key: str, default: float, where: str) -> float:
  v = d.get(key, default)
  if v is None:
    return default
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise BadRequest(f"{where}.{key}={v!r} must be a number")
  return float(v)


def sampling_from_sglang(sp: dict | None, *, default_max_new_tokens: int = 128,
                         where: str = "sampling_params") -> SamplingParams:
  """SGLang `sampling_params` JSON -> SamplingParams (BadRequest naming the field)."""
  sp = dict(sp or {})
  if not isinstance(sp, dict):
    raise BadRequest(f"{where} must be a JSON object")
  for key, off in _UNSUPPORTED_SAMPLING.items():
    if key in sp and sp[key] is not None and sp[key] != off and sp[key] != []:
      raise BadRequest(f"{where}.{key}={sp[key]!r} is not supported by this server "
                       "(token ids in, token ids out: use stop_token_ids for stopping)")
  stop_ids = sp.get("stop_token_ids") or ()
  if not isinstance(stop_ids, (list, tuple)) or not all(
      isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
    raise BadRequest(f"{where}.stop_token_ids={stop_ids!r} must be a list of integers")
  top_k = _int(sp, "top_k", -1, where)
  temperature = _float(sp, "temperature", 1.0, where)
  top_p = _float(sp, "top_p", 1.0, where)
  max_new = _int(sp, "max_new_tokens", default_max_new_tokens, where)
  min_new = _int(sp, "min_new_tokens", 0, where)
  if temperature < 0:
    raise BadRequest(f"{where}.temperature={temperature} must be >= 0")
  if not 0.0 < top_p <= 1.0:
    raise BadRequest(f"{where}.top_p={top_p} must be in (0, 1]")
  if max_new < 1:
    raise BadRequest(f"{where}.max_new_tokens={max_new} must be >= 1")
  if not 0 <= min_new <= max_new:
    raise BadRequest(f"{where}.min_new_tokens={min_new} must be in [0, max_new_tokens]")
  return SamplingParams(
      max_new_tokens=max_new, temperature=temperature, top_p=top_p,
      top_k=top_k if top_k and top_k > 0 else 0, min_new_tokens=min_new,
      stop_token_ids=tuple(int(t) for t in stop_ids),
      seed=_int(sp, "sampling_seed", None, where))


def finish_reason_json(c: Completion) -> dict:
  if c.finish_reason == "stop":
    return {"type": "stop", "matched": c.token_ids[-1] if c.token_ids else None}
  if c.finish_reason == "length":
    return {"type": "length", "length": len(c.token_ids)}
  return {"type": "abort", "message": "aborted"}


class RolloutServer:
  """One served model (agent) behind SGLang's HTTP protocol.

  Args:
    engine: the InProcessEngine holding the model.
    agent: which of the engine's agents this server exposes.
    tokenizer: mappa_jax.models.tokenizer.Tokenizer, or None (then only input_ids requests).
    model_path, tokenizer_path: reported by /get_model_info.
    served_model_name: the `model` id of the OpenAI routes.
    default_max_new_tokens: SGLang's default budget when a request gives none.
  """

  def __init__(self, engine: InProcessEngine, *, agent: str = DEFAULT_AGENT, tokenizer=None,
               model_path: str = "", tokenizer_path: str | None = None,
               served_model_name: str = "mappa-jax", default_max_new_tokens: int = 128):
    if agent not in engine.agents:
      raise ValueError(f"agent {agent!r} is not served by the engine ({engine.agents})")
    self.engine = engine
    self.agent = agent
    self.tokenizer = tokenizer
    self.model_path = str(model_path)
    self.tokenizer_path = tokenizer_path
    self.served_model_name = served_model_name
    self.default_max_new_tokens = default_max_new_tokens
    self._update_lock: asyncio.Lock | None = None

  def app(self) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._errors])
    r = app.router
    r.add_post("/generate", self.generate)
    r.add_put("/generate", self.generate)
    r.add_get("/health", self.health)
    r.add_get("/health_generate", self.health)
    r.add_get("/get_model_info", self.model_info)
    r.add_get("/get_weight_version", self.weight_version)
    r.add_post("/update_weights_from_disk", self.update_weights_from_disk)
    r.add_post("/pause_generation", self.pause)
    r.add_post("/continue_generation", self.resume)
    r.add_get("/v1/models", self.models)
    r.add_post("/v1/chat/completions", self.chat_completions)
    return app

  @web.middleware
  async def _errors(self, request: web.Request, handler):
    try:
      return await handler(request)
    except web.HTTPException:
      raise
    except (BadRequest, ValueError, KeyError) as e:
      return _error(400, str(e) if not isinstance(e, KeyError) else str(e.args[0]))
    except Exception as e:  # pylint: disable=broad-except
      log.exception("%s %s failed", request.method, request.path)
      return _error(500, f"{type(e).__name__}: {e}")

  async def _json(self, request: web.Request) -> Any:
    if not request.can_read_body:
      return {}
    try:
      return await request.json()
    except ValueError:
      raise BadRequest("request body is not valid JSON") from None

  # --- native routes -----------------------------------------------------------------------

  def _prompts(self, body: dict) -> tuple[list[list[int]], bool]:
    """(prompts, batched) from input_ids or text."""
    if body.get("input_ids") is not None:
      ids = body["input_ids"]
      if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
        prompts, batched = ids, True
      elif isinstance(ids, list):
        prompts, batched = [ids], False
      else:
        raise BadRequest("input_ids must be a list of ints or a list of lists of ints")
      for p in prompts:
        if not p or not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
          raise BadRequest("input_ids: every prompt must be a non-empty list of integers")
      return prompts, batched
    if body.get("text") is not None:
      if self.tokenizer is None:
        raise BadRequest(f"this server has no tokenizer ({self.model_path} has no "
                         "tokenizer.json): send input_ids instead of text")
      text = body["text"]
      if isinstance(text, str):
        return [self.tokenizer.encode(text)], False
      if isinstance(text, list) and all(isinstance(t, str) for t in text):
        return [self.tokenizer.encode(t) for t in text], True
      raise BadRequest("text must be a string or a list of strings")
    raise BadRequest("give input_ids (or text) in the request body")

  def _reply(self, c: Completion, prompt_len: int, rid: str, latency: float, *,
             return_logprob: bool, skip_special_tokens: bool) -> dict:
    meta = {
        "id": rid,
        "finish_reason": finish_reason_json(c),
        "prompt_tokens": prompt_len,
        "completion_tokens": len(c.token_ids),
        "cached_tokens": 0,
        "weight_version": str(c.weight_version),
        "e2e_latency": latency,
    }
    if return_logprob:
      meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(c.logprobs, c.token_ids)]
    reply: dict[str, Any] = {"output_ids": list(c.token_ids), "meta_info": meta}
    if self.tokenizer is not None:
      reply["text"] = self.tokenizer.decode(c.token_ids, skip_special_tokens=skip_special_tokens)
    return reply

  async def generate(self, request: web.Request) -> web.Response:
    body = await self._json(request)
    if not isinstance(body, dict):
      raise BadRequest("request body must be a JSON object")
    if body.get("stream"):
      raise BadRequest("stream=true is not supported by this server")
    prompts, batched = self._prompts(body)
    sp = body.get("sampling_params") or {}
    if isinstance(sp, list):
      if len(sp) != len(prompts):
        raise BadRequest(f"sampling_params is a list of {len(sp)} but there are "
                         f"{len(prompts)} prompts")
      samplings = [sampling_from_sglang(s, default_max_new_tokens=self.default_max_new_tokens,
                                        where=f"sampling_params[{i}]") for i, s in enumerate(sp)]
    else:
      one = sampling_from_sglang(sp, default_max_new_tokens=self.default_max_new_tokens)
      samplings = [one] * len(prompts)
      if batched and one.seed is not None:  # distinct rows, reproducible: seed + row index
        samplings = [dataclasses.replace(one, seed=one.seed + i) for i in range(len(prompts))]
    rid = body.get("rid")
    if isinstance(rid, list) and len(rid) == len(prompts):
      rids = [str(r) for r in rid]
    else:
      rids = [uuid.uuid4().hex if rid is None else str(rid) for _ in prompts]
    t0 = time.perf_counter()
    completions = await asyncio.gather(
        *(self.engine.generate(self.agent, p, s) for p, s in zip(prompts, samplings)))
    latency = time.perf_counter() - t0
    skip = bool(sp.get("skip_special_tokens", True)) if isinstance(sp, dict) else True
    replies = [self._reply(c, len(p), r, latency, return_logprob=bool(body.get("return_logprob")),
                           skip_special_tokens=skip)
               for c, p, r in zip(completions, prompts, rids)]
    return web.json_response(replies if batched else replies[0])

  async def health(self, request: web.Request) -> web.Response:
    h = await self.engine.health()
    return web.Response(status=200 if h["ok"] else 503)

  async def model_info(self, request: web.Request) -> web.Response:
    return web.json_response({
        "model_path": self.model_path,
        "tokenizer_path": self.tokenizer_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": str(self.engine.weight_version(self.agent)),
    })

  async def weight_version(self, request: web.Request) -> web.Response:
    return web.json_response({"weight_version": str(self.engine.weight_version(self.agent))})

  async def update_weights_from_disk(self, request: web.Request) -> web.Response:
    body = await self._json(request)
    if not isinstance(body, dict) or not body.get("model_path"):
      raise BadRequest("update_weights_from_disk needs {\"model_path\": DIR}")
    path = str(body["model_path"])
    load_format = body.get("load_format")
    prefer = {None: "orbax", "auto": "orbax", "orbax": "orbax", "safetensors": "hf",
              "hf": "hf"}.get(load_format)
    if prefer is None:
      raise BadRequest(f"load_format={load_format!r}: use auto, orbax or safetensors")
    current = self.engine.weight_version(self.agent)
    version = body.get("weight_version")
    if version is None:
      version = current + 1
    else:
      try:
        version = int(version)
      except (TypeError, ValueError):
        raise BadRequest(f"weight_version={version!r}: this server numbers versions with "
                         "integers") from None
    if self._update_lock is None:
      self._update_lock = asyncio.Lock()
    async with self._update_lock:
      t0 = time.perf_counter()
      try:
        fmt = publish_lib.detect_format(path)
        if load_format == "orbax" and fmt == "hf":
          raise ValueError(f"{path} is an HF dir, but load_format='orbax'")
        state, read = await asyncio.to_thread(
            publish_lib.load_params, path, like=self.engine.params(self.agent), prefer=prefer)
        await self.engine.publish(self.agent, state, version)
      except (ValueError, FileNotFoundError, OSError) as e:
        return web.json_response({"success": False, "message": str(e),
                                  "num_paused_requests": 0}, status=400)
      self.model_path = path
    return web.json_response({
        "success": True,
        "message": (f"Succeeded to update model weights from {read} checkpoint {path} in "
                    f"{time.perf_counter() - t0:.3f}s. Weight version updated to {version}."),
        "num_paused_requests": 0,
    })

  async def pause(self, request: web.Request) -> web.Response:
    body = await self._json(request)
    mode = body.get("mode") if isinstance(body, dict) else None
    if mode not in (None, "abort", "retract", "in_place"):
      raise BadRequest(f"mode={mode!r}: use abort, retract or in_place")
    await self.engine.pause()
    return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

  async def resume(self, request: web.Request) -> web.Response:
    await self.engine.resume()
    return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

  # --- OpenAI-compatible routes ------------------------------------------------------------

  async def models(self, request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": self.served_model_name, "object": "model", "owned_by": "mappa_jax",
         "root": self.served_model_name}]})

  async def chat_completions(self, request: web.Request) -> web.Response:
    if self.tokenizer is None:
      raise BadRequest(f"/v1/chat/completions needs a tokenizer with a chat template; "
                       f"{self.model_path} has no tokenizer.json")
    body = await self._json(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
      raise BadRequest("chat completion needs a JSON body with a 'messages' list")
    if body.get("stream"):
      raise BadRequest("stream=true is not supported by this server")
    if body.get("stop"):
      raise BadRequest("stop strings are not supported by this server")
    n = _int(body, "n", 1, "request")
    if n < 1:
      raise BadRequest(f"n={n} must be >= 1")
    max_new = body.get("max_completion_tokens") or body.get("max_tokens")
    kwargs = body.get("chat_template_kwargs") or {}
    prompt = self.tokenizer.apply_chat_template(
        body["messages"], add_generation_prompt=True,
        enable_thinking=kwargs.get("enable_thinking"))
    base = sampling_from_sglang({
        "max_new_tokens": max_new, "temperature": body.get("temperature"),
        "top_p": body.get("top_p"), "top_k": body.get("top_k"),
        "min_new_tokens": body.get("min_tokens"), "sampling_seed": body.get("seed"),
    }, default_max_new_tokens=self.default_max_new_tokens, where="request")
    samplings = [base if base.seed is None else dataclasses.replace(base, seed=base.seed + i)
                 for i in range(n)]
    completions = await asyncio.gather(
        *(self.engine.generate(self.agent, prompt, s) for s in samplings))
    choices = []
    for i, c in enumerate(completions):
      text = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
      choices.append({"index": i, "message": {"role": "assistant", "content": text},
                      "finish_reason": "length" if c.finish_reason == "length" else "stop",
                      "logprobs": None})
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return web.json_response({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model") or self.served_model_name,
        "choices": choices,
        "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
                  "total_tokens": len(prompt) + completion_tokens},
        "metadata": {"weight_version": str(completions[0].weight_version)},
    })


def load_server(model_dir: str | Path, *, config: InProcessEngineConfig = InProcessEngineConfig(),
                served_model_name: str | None = None,
                eos_token_ids: tuple[int, ...] | None = None) -> RolloutServer:
  """A RolloutServer for an HF model dir (tokenizer files optional).

  EOS ids: `eos_token_ids` if given, else the tokenizer's, else config.json's eos_token_id.
  """
  model_dir = Path(model_dir)
  if not publish_lib.is_hf_dir(model_dir):
    raise ValueError(f"--model={model_dir}: expected an HF model dir (config.json + "
                     "*.safetensors), e.g. one written by mappa_jax.models.tiny.write_tiny_model")
  model = hf_io.load_hf(model_dir)
  tokenizer = None
  if (model_dir / "tokenizer.json").is_file():
    tokenizer = Tokenizer.from_dir(model_dir)
    eos = tokenizer.eos_token_ids
  else:
    eos = model.config.eos_token_ids
  if eos_token_ids:
    eos = tuple(eos_token_ids)
  if not eos:
    raise ValueError(f"{model_dir}: no end-of-sequence id (config.json eos_token_id is null and "
                     "there is no tokenizer); pass eos_token_ids (launch/serve.py "
                     "--eos_token_ids=ID[,ID])")
  engine = InProcessEngine({DEFAULT_AGENT: model}, eos_token_ids=eos, config=config)
  return RolloutServer(engine, tokenizer=tokenizer, model_path=str(model_dir),
                       tokenizer_path=str(model_dir) if tokenizer else None,
                       served_model_name=served_model_name or model_dir.name)


class BackgroundServer:
  """Runs a RolloutServer on its own event loop in a daemon thread (tests, benchmarks).

  Usage: `with BackgroundServer(server) as url: ...` (port 0 picks a free port).
  """

  def __init__(self, server: RolloutServer, host: str = "127.0.0.1", port: int = 0):
    self.server = server
    self.host = host
    self.port = port
    self.url: str | None = None
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                    name="mappa-rollout-server")
    self._runner: web.AppRunner | None = None

  async def _start(self) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((self.host, self.port))
    self.port = sock.getsockname()[1]
    self._runner = web.AppRunner(self.server.app())
    await self._runner.setup()
    await web.SockSite(self._runner, sock).start()

  def start(self) -> str:
    self._thread.start()
    asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
    self.url = f"http://{self.host}:{self.port}"
    return self.url

  def stop(self) -> None:
    async def _stop():
      if self._runner is not None:
        await self._runner.cleanup()
      await self.server.engine.aclose()
    try:
      asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=30)
    finally:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout=30)

  def __enter__(self) -> str:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def run_server(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 30000,
               config: InProcessEngineConfig = InProcessEngineConfig(),
               eos_token_ids: tuple[int, ...] | None = None) -> None:
  """Blocking: loads `model_dir` and serves it until interrupted."""
  server = load_server(model_dir, config=config, eos_token_ids=eos_token_ids)
  log.info("serving %s on http://%s:%d (tokenizer: %s)", model_dir, host, port,
           "yes" if server.tokenizer else "no, input_ids only")
  web.run_app(server.app(), host=host, port=port, print=None)
