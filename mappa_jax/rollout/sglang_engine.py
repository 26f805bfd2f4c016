"""RolloutEngine over SGLang's native HTTP API.

Speaks the subset of SGLang's protocol listed in docs/sglang.md: `/generate` with `input_ids`,
`sampling_params` and `return_logprob`, and the weight-update flow `pause_generation` →
`update_weights_from_disk` → `continue_generation`. The same client drives a real SGLang
server on GPUs and our own server (mappa_jax.rollout.server) on CPU/TPU hosts.

Every agent has one or more servers; a request goes to the server of that agent with the fewest
requests in flight (ties broken round robin), so several servers of one agent share the load.
Transient failures (connection errors, timeouts, 5xx, aborted requests) are retried with
exponential backoff on the next server; an aborted request is restarted from scratch rather
than continued, so every Completion comes from exactly one weight version.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from typing import Any, Mapping, Sequence

import httpx

from mappa_jax.rollout.types import Completion, SamplingParams

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SGLangError(RuntimeError):
  """Base class of the client's errors."""


class SGLangUnavailableError(SGLangError):
  """Every attempt failed with a transient error (connection, timeout, 5xx, abort)."""


class SGLangRequestError(SGLangError):
  """The server rejected the request (4xx): retrying cannot help."""


class SGLangProtocolError(SGLangError):
  """The reply does not have the shape the client relies on (see docs/sglang.md)."""


class PublishError(SGLangError):
  """A weight update failed on at least one server."""


@dataclasses.dataclass(frozen=True)
class SGLangEngineConfig:
  """Client settings.

  Attributes:
    request_timeout_s: per-attempt limit for one /generate call (long generations take long).
    connect_timeout_s: limit for opening a connection.
    control_timeout_s: limit for control calls (update_weights_from_disk reloads the model).
    max_retries: attempts after the first one before giving up with SGLangUnavailableError.
    backoff_initial_s: first retry delay; doubled on every retry.
    backoff_max_s: cap on the retry delay.
    pause_mode: body of /pause_generation. None sends no body (servers that predate the field
      pause in place); 'abort' (SGLang's default: running requests return finish 'abort' and
      this client retries them on the new weights), 'retract' or 'in_place'.
    abort_all_requests: passed to /update_weights_from_disk.
    push_format: which copy of a published version the servers load: 'hf' (the safetensors
      export; what real SGLang reads) or 'orbax' (the Orbax checkpoint; our server only).
    server_cooldown_s: after a transient failure a server gets no new requests for this long
      while the agent has other servers (then it is tried again).
  """
  request_timeout_s: float = 600.0
  connect_timeout_s: float = 10.0
  control_timeout_s: float = 900.0
  max_retries: int = 5
  backoff_initial_s: float = 0.5
  backoff_max_s: float = 10.0
  pause_mode: str | None = None
  abort_all_requests: bool = False
  push_format: str = "hf"
  server_cooldown_s: float = 5.0

  def __post_init__(self):
    if self.push_format not in ("hf", "orbax"):
      raise ValueError(f"push_format={self.push_format!r}: use 'hf' or 'orbax'")
    if self.pause_mode not in (None, "abort", "retract", "in_place"):
      raise ValueError(f"pause_mode={self.pause_mode!r}: use None, 'abort', 'retract' or "
                       "'in_place'")


def sampling_params_to_sglang(sampling: SamplingParams) -> dict[str, Any]:
  """Maps our SamplingParams to SGLang's `sampling_params` JSON object.

  SGLang disables top-k with -1 (0 is rejected), treats temperature 0 as greedy, and seeds a
  request with `sampling_seed`.
  """
  out: dict[str, Any] = {
      "max_new_tokens": int(sampling.max_new_tokens),
      "temperature": float(sampling.temperature),
      "top_p": float(sampling.top_p),
      "top_k": int(sampling.top_k) if sampling.top_k > 0 else -1,
      "min_new_tokens": int(sampling.min_new_tokens),
  }
  if sampling.stop_token_ids:
    out["stop_token_ids"] = [int(t) for t in sampling.stop_token_ids]
  if sampling.seed is not None:
    out["sampling_seed"] = int(sampling.seed)
  return out


def parse_weight_version(value: Any) -> int:
  """SGLang reports weight_version as a string ('default' before any update) -> int.

  'default' and a missing field mean the weights the server started with: version 0.
  """
  if value is None or value == "default":
    return 0
  try:
    return int(value)
  except (TypeError, ValueError):
    raise SGLangProtocolError(
        f"meta_info.weight_version={value!r} is not an integer; publish versions through "
        "this client (it always sends integer versions)") from None


def parse_generate_reply(reply: Any) -> tuple[Completion, dict]:
  """SGLang /generate reply (one request) -> (Completion, finish_reason dict).

  The sampled ids and their logprobs come from meta_info.output_token_logprobs
  ([logprob, token_id, text-or-null] per generated token, the stop token included);
  `output_ids` must agree with them (it may omit a trailing stop token).
  """
  if not isinstance(reply, dict) or not isinstance(reply.get("meta_info"), dict):
    raise SGLangProtocolError(f"/generate reply has no meta_info object: {str(reply)[:300]}")
  meta = reply["meta_info"]
  finish = meta.get("finish_reason")
  if not isinstance(finish, dict) or finish.get("type") not in ("stop", "length", "abort"):
    raise SGLangProtocolError(
        f"meta_info.finish_reason should be {{type: stop|length|abort}}, got {finish!r}")
  if finish["type"] == "abort":
    return Completion((), (), "abort", parse_weight_version(meta.get("weight_version"))), finish
  triples = meta.get("output_token_logprobs")
  if not isinstance(triples, list):
    raise SGLangProtocolError(
        "meta_info.output_token_logprobs missing: the request must set return_logprob=true")
  try:
    logprobs = tuple(float(t[0]) for t in triples)
    token_ids = tuple(int(t[1]) for t in triples)
  except (TypeError, ValueError, IndexError):
    raise SGLangProtocolError(
        "meta_info.output_token_logprobs should be [[logprob, token_id, text], ...], got "
        f"{str(triples)[:200]}") from None
  output_ids = reply.get("output_ids")
  if output_ids is not None:
    output_ids = tuple(int(t) for t in output_ids)
    if output_ids != token_ids and output_ids != token_ids[:-1]:
      raise SGLangProtocolError(
          f"output_ids ({len(output_ids)} ids) disagree with output_token_logprobs "
          f"({len(token_ids)} ids): refusing a sample whose tokens and logprobs do not match")
  return Completion(
      token_ids=token_ids,
      logprobs=logprobs,
      finish_reason=finish["type"],
      weight_version=parse_weight_version(meta.get("weight_version")),
  ), finish


class SGLangEngine:
  """RolloutEngine whose agents are served by SGLang-protocol HTTP servers.

  Args:
    servers: agent name -> base URLs of that agent's servers (e.g. 'http://10.0.0.2:30000').
    publisher: writes the weights of a new version to disk (mappa_jax.rollout.publish
      .WeightPublisher); required by publish().
    config: timeouts, retries and pause mode.
    transport: optional httpx transport (tests, custom TLS).
  """

  def __init__(self, servers: Mapping[str, Sequence[str]], *, publisher=None,
               config: SGLangEngineConfig = SGLangEngineConfig(),
               transport: httpx.AsyncBaseTransport | None = None):
    if not servers:
      raise ValueError("servers: give at least one agent -> [url, ...] entry")
    self._servers: dict[str, tuple[str, ...]] = {}
    for agent, urls in servers.items():
      if isinstance(urls, str):
        urls = [urls]
      urls = tuple(u.rstrip("/") for u in urls)
      if not urls:
        raise ValueError(f"servers[{agent!r}] is empty: list at least one server URL")
      for u in urls:
        if not u.startswith(("http://", "https://")):
          raise ValueError(f"servers[{agent!r}]: {u!r} is not an http(s):// URL")
      self._servers[agent] = urls
    self.publisher = publisher
    self.config = config
    self._transport = transport
    self._client: httpx.AsyncClient | None = None
    self._client_loop: asyncio.AbstractEventLoop | None = None
    self._in_flight = {u: 0 for urls in self._servers.values() for u in urls}
    self._down_until = {u: 0.0 for u in self._in_flight}  # time.monotonic() deadlines
    self._round_robin = {agent: itertools.count() for agent in self._servers}
    self._running: asyncio.Event | None = None

  @property
  def agents(self) -> tuple[str, ...]:
    return tuple(self._servers)

  def servers(self, agent: str) -> tuple[str, ...]:
    if agent not in self._servers:
      raise KeyError(f"unknown agent {agent!r}; configured agents: {sorted(self._servers)}")
    return self._servers[agent]

  # --- plumbing --------------------------------------------------------------------------

  def _http(self) -> httpx.AsyncClient:
    # An AsyncClient belongs to the loop it was first used in; tests run several loops.
    loop = asyncio.get_running_loop()
    if self._client is None or self._client_loop is not loop:
      c = self.config
      self._client = httpx.AsyncClient(
          timeout=httpx.Timeout(c.request_timeout_s, connect=c.connect_timeout_s),
          limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
          transport=self._transport)
      self._client_loop = loop
      self._running = None
    return self._client

  def _gate(self) -> asyncio.Event:
    """Client-side pause gate (bound to the current loop, like the HTTP client)."""
    self._http()
    if self._running is None:
      self._running = asyncio.Event()
      self._running.set()
    return self._running

  async def aclose(self) -> None:
    if self._client is not None:
      await self._client.aclose()
      self._client = None

  async def __aenter__(self) -> "SGLangEngine":
    return self

  async def __aexit__(self, *exc) -> None:
    await self.aclose()

  def _pick(self, agent: str) -> str:
    urls = self.servers(agent)
    start = next(self._round_robin[agent]) % len(urls)
    rotated = urls[start:] + urls[:start]
    now = time.monotonic()
    # Servers not cooling down after a failure first, then fewest in flight; rotation breaks ties.
    return min(rotated, key=lambda u: (self._down_until[u] > now, self._in_flight[u]))

  def _mark_failed(self, url: str) -> None:
    self._down_until[url] = time.monotonic() + self.config.server_cooldown_s

  def _backoff(self, attempt: int) -> float:
    c = self.config
    return min(c.backoff_max_s, c.backoff_initial_s * (2 ** attempt))

  # --- RolloutEngine ---------------------------------------------------------------------

  async def generate(self, agent: str, prompt_ids: Sequence[int],
                     sampling: SamplingParams) -> Completion:
    """POST /generate on one of the agent's servers; retries transient failures."""
    self.servers(agent)  # unknown agent -> KeyError before any I/O
    payload = {
        "input_ids": [int(t) for t in prompt_ids],
        "sampling_params": sampling_params_to_sglang(sampling),
        "return_logprob": True,
    }
    client = self._http()
    await self._gate().wait()
    errors: list[str] = []
    attempts = self.config.max_retries + 1
    for attempt in range(attempts):
      if attempt:
        await asyncio.sleep(self._backoff(attempt - 1))
        await self._gate().wait()
      url = self._pick(agent)
      self._in_flight[url] += 1
      try:
        resp = await client.post(f"{url}/generate", json=payload)
      except httpx.TransportError as e:  # connect errors, timeouts, dropped connections
        self._mark_failed(url)
        errors.append(f"{url}: {type(e).__name__}: {e}")
        continue
      finally:
        self._in_flight[url] -= 1
      if resp.status_code in _RETRY_STATUS:
        self._mark_failed(url)
        errors.append(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
        continue
      if resp.status_code >= 400:
        raise SGLangRequestError(
            f"{url}/generate rejected the request for agent {agent!r} "
            f"(HTTP {resp.status_code}): {resp.text[:500]}")
      self._down_until[url] = 0.0
      reply = resp.json()
      if isinstance(reply, list):  # a batch reply to a single request: protocol drift
        raise SGLangProtocolError(f"{url}/generate returned a list for a single input_ids")
      completion, finish = parse_generate_reply(reply)
      if completion.finish_reason == "abort":
        errors.append(f"{url}: request aborted ({finish.get('message', 'no message')})")
        continue
      return completion
    raise SGLangUnavailableError(
        f"agent {agent!r}: /generate failed {attempts} times over servers "
        f"{list(self.servers(agent))}; errors: " + " | ".join(errors[-4:]))

  async def _control(self, url: str, route: str, body: dict | None = None,
                     method: str = "POST") -> httpx.Response:
    """One control call with the same retry policy as /generate (5xx and transport only)."""
    client = self._http()
    errors = []
    for attempt in range(self.config.max_retries + 1):
      if attempt:
        await asyncio.sleep(self._backoff(attempt - 1))
      try:
        resp = await client.request(method, f"{url}{route}", json=body,
                                    timeout=self.config.control_timeout_s)
      except httpx.TransportError as e:
        errors.append(f"{type(e).__name__}: {e}")
        continue
      if resp.status_code in _RETRY_STATUS:
        errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
        continue
      return resp
    raise SGLangUnavailableError(
        f"{url}{route} failed {self.config.max_retries + 1} times: " + " | ".join(errors[-3:]))

  async def update_server_weights(self, url: str, model_path: str, version: int) -> dict:
    """pause_generation → update_weights_from_disk → continue_generation on one server.

    continue_generation is sent even when the update fails, so no server stays paused.
    Returns the update reply ({success, message, num_paused_requests}).
    """
    pause_body = None if self.config.pause_mode is None else {"mode": self.config.pause_mode}
    resp = await self._control(url, "/pause_generation", pause_body)
    if resp.status_code != 200:
      raise PublishError(f"{url}/pause_generation: HTTP {resp.status_code}: {resp.text[:300]}")
    try:
      resp = await self._control(url, "/update_weights_from_disk", {
          "model_path": str(model_path),
          "weight_version": str(int(version)),
          "abort_all_requests": self.config.abort_all_requests,
      })
      try:
        reply = resp.json()
      except ValueError:
        reply = {"success": False, "message": resp.text[:300]}
      if resp.status_code != 200 or not reply.get("success", False):
        raise PublishError(
            f"{url}/update_weights_from_disk(model_path={model_path}) failed "
            f"(HTTP {resp.status_code}): {reply.get('message', reply)}")
      return reply
    finally:
      resp = await self._control(url, "/continue_generation")
      if resp.status_code != 200:
        raise PublishError(
            f"{url}/continue_generation: HTTP {resp.status_code}: {resp.text[:300]}")

  async def publish(self, agent: str, params, version: int) -> None:
    """Writes `params` (Decoder or nnx.State) as version `version`, then reloads every server.

    The write (Orbax checkpoint + HF safetensors export, atomic) runs in a worker thread; the
    servers reload the HF export concurrently.
    """
    self.servers(agent)
    if self.publisher is None:
      raise ValueError("SGLangEngine.publish needs a publisher: pass "
                       "publisher=mappa_jax.rollout.publish.WeightPublisher(...)")
    published = await asyncio.to_thread(self.publisher.write, agent, params, version)
    await self.push(agent, published.path_for(self.config.push_format), version)

  async def push(self, agent: str, model_path, version: int) -> None:
    """Makes every server of `agent` load the weights at `model_path` as `version`."""
    urls = self.servers(agent)
    results = await asyncio.gather(
        *(self.update_server_weights(u, str(model_path), version) for u in urls),
        return_exceptions=True)
    failed = [(u, r) for u, r in zip(urls, results) if isinstance(r, BaseException)]
    if failed:
      raise PublishError(f"agent {agent!r} version {version}: " + "; ".join(
          f"{u}: {r}" for u, r in failed))

  async def pause(self) -> None:
    """Holds new requests here and pauses every server."""
    self._gate().clear()
    body = None if self.config.pause_mode is None else {"mode": self.config.pause_mode}
    await asyncio.gather(*(self._control(u, "/pause_generation", body)
                           for u in self._in_flight))

  async def resume(self) -> None:
    await asyncio.gather(*(self._control(u, "/continue_generation") for u in self._in_flight))
    self._gate().set()

  async def health(self) -> dict:
    """GET /health and /get_model_info on every server (no retries: this is a probe)."""
    client = self._http()

    async def probe(url: str) -> dict:
      try:
        r = await client.get(f"{url}/health", timeout=self.config.connect_timeout_s)
        info = {"ok": r.status_code == 200, "status": r.status_code}
        if info["ok"]:
          m = await client.get(f"{url}/get_model_info", timeout=self.config.connect_timeout_s)
          if m.status_code == 200:
            info["weight_version"] = parse_weight_version(m.json().get("weight_version"))
        return info
      except httpx.TransportError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    agents = {}
    for agent, urls in self._servers.items():
      probes = await asyncio.gather(*(probe(u) for u in urls))
      agents[agent] = dict(zip(urls, probes))
    ok = all(p["ok"] for servers in agents.values() for p in servers.values())
    return {"ok": ok, "paused": not self._gate().is_set(), "agents": agents}
