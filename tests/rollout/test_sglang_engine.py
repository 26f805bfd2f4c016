"""SGLangEngine (HTTP client) against a protocol-faithful fake SGLang server on 127.0.0.1.

SGLang itself cannot run on CPU (platform notes), so the fake speaks its wire format as read
from SGLang's source (http_server.py, io_struct.py, sampling_params.py; docs/sglang.md):
`/generate` replies with output_ids + meta_info {finish_reason {type, matched|length|message},
output_token_logprobs [[logprob, id, text]], weight_version (a string)}, and
`/update_weights_from_disk` answers {success, message, num_paused_requests}. Failures
(500s, aborts, slow replies, refused connections) are injected per request.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import jax
import jax.numpy as jnp
import pytest
from aiohttp import web
from flax import nnx

from mappa_jax.rollout import publish as publish_lib
from mappa_jax.rollout.sglang_engine import (
    PublishError, SGLangEngine, SGLangEngineConfig, SGLangProtocolError, SGLangRequestError,
    SGLangUnavailableError, parse_generate_reply, sampling_params_to_sglang)
from mappa_jax.rollout.types import RolloutEngine, SamplingParams
from tests.rollout.rollout_fixtures import run, tiny_dirs  # noqa: F401

FAST = SGLangEngineConfig(max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.02,
                          request_timeout_s=5.0, connect_timeout_s=1.0, control_timeout_s=5.0)


class FakeSGLang:
  """SGLang wire protocol; tokens: prompt[-1] + seed + 1000 * weight_version + i."""

  def __init__(self, name: str):
    self.name = name
    self.requests: list[dict] = []
    self.control: list[tuple[str, dict | None]] = []
    self.script: list[str] = []  # per /generate: 'ok' | '500' | 'abort' | 'slow' | '400'
    self.weight_version = "default"
    self.paused = False
    self.update_ok = True
    self.eos = 2

  async def generate(self, request):
    body = await request.json()
    self.requests.append(body)
    action = self.script.pop(0) if self.script else "ok"
    if action == "500":
      return web.json_response({"object": "error", "message": "boom", "code": 500}, status=500)
    if action == "400":
      return web.json_response({"object": "error", "message": "bad top_k", "code": 400},
                               status=400)
    if action == "slow":
      await asyncio.sleep(1.5)
    meta = {"id": "r", "prompt_tokens": len(body["input_ids"]), "cached_tokens": 0,
            "weight_version": self.weight_version}
    if action == "abort":
      meta.update(finish_reason={"type": "abort", "message": "Abort before prefill"},
                  output_token_logprobs=[], completion_tokens=0)
      return web.json_response({"text": "", "output_ids": [], "meta_info": meta})
    sp = body["sampling_params"]
    version = 0 if self.weight_version == "default" else int(self.weight_version)
    base = body["input_ids"][-1] + sp.get("sampling_seed", 0) + 1000 * version
    ids = [base + i for i in range(sp["max_new_tokens"] - 1)] + [self.eos]
    meta.update(finish_reason={"type": "stop", "matched": self.eos}, completion_tokens=len(ids),
                output_token_logprobs=[[-0.5 * (i + 1), t, None] for i, t in enumerate(ids)])
    return web.json_response({"text": "...", "output_ids": ids, "meta_info": meta})

  async def pause(self, request):
    self.control.append(("pause", await request.json() if request.can_read_body else None))
    self.paused = True
    return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

  async def resume(self, request):
    self.control.append(("continue", None))
    self.paused = False
    return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

  async def update(self, request):
    body = await request.json()
    self.control.append(("update", body))
    ok = self.update_ok and self.paused and publish_lib.is_hf_dir(
        __import__("pathlib").Path(body["model_path"]))
    if not ok:
      return web.json_response({"success": False, "message": "Failed to load weights",
                                "num_paused_requests": 0}, status=400)
    self.weight_version = body.get("weight_version") or self.weight_version
    return web.json_response({"success": True, "message": "Succeeded to update model weights.",
                              "num_paused_requests": 0})

  async def health(self, request):
    return web.Response(status=200)

  async def model_info(self, request):
    return web.json_response({"model_path": "m", "tokenizer_path": "m", "is_generation": True,
                              "preferred_sampling_params": None,
                              "weight_version": self.weight_version})

  def app(self):
    app = web.Application()
    app.router.add_post("/generate", self.generate)
    app.router.add_post("/pause_generation", self.pause)
    app.router.add_post("/continue_generation", self.resume)
    app.router.add_post("/update_weights_from_disk", self.update)
    app.router.add_get("/health", self.health)
    app.router.add_get("/get_model_info", self.model_info)
    return app


class Servers:
  """Runs fake servers on one background event loop, on free 127.0.0.1 ports."""

  def __init__(self, n: int):
    self.fakes = [FakeSGLang(f"s{i}") for i in range(n)]
    self.loop = asyncio.new_event_loop()
    self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
    self.thread.start()
    self.runners, self.urls = [], []
    for f in self.fakes:
      self.urls.append(asyncio.run_coroutine_threadsafe(self._start(f), self.loop).result(10))

  async def _start(self, fake):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.SockSite(runner, sock).start()
    self.runners.append(runner)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"

  def close(self):
    for r in self.runners:
      asyncio.run_coroutine_threadsafe(r.cleanup(), self.loop).result(10)
    self.loop.call_soon_threadsafe(self.loop.stop)
    self.thread.join(10)


@pytest.fixture
def servers():
  s = Servers(2)
  yield s
  s.close()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_request_fields_and_reply_parsing(servers):
  engine = SGLangEngine({"solver": [servers.urls[0]]}, config=FAST)
  assert isinstance(engine, RolloutEngine)
  sp = SamplingParams(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=0, min_new_tokens=1,
                      stop_token_ids=(9,), seed=5)
  out = run(engine.generate("solver", [1, 2, 3], sp))
  body = servers.fakes[0].requests[0]
  assert body == {"input_ids": [1, 2, 3], "return_logprob": True, "sampling_params": {
      "max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_new_tokens": 1,
      "stop_token_ids": [9], "sampling_seed": 5}}
  assert out.token_ids == (8, 9, 10, 2)
  assert out.logprobs == (-0.5, -1.0, -1.5, -2.0)
  assert out.finish_reason == "stop"
  assert out.weight_version == 0  # 'default' = the weights the server started with


def test_sampling_params_mapping_top_k_and_greedy():
  d = sampling_params_to_sglang(SamplingParams(top_k=20, temperature=0.0))
  assert d["top_k"] == 20 and d["temperature"] == 0.0 and "sampling_seed" not in d
  assert "stop_token_ids" not in d


def test_protocol_errors_are_named():
  meta = {"finish_reason": {"type": "stop", "matched": 2}, "weight_version": "3",
          "output_token_logprobs": [[-1.0, 4, None], [-1.0, 2, None]]}
  c, _ = parse_generate_reply({"output_ids": [4], "meta_info": meta})  # trimmed stop: fine
  assert c.token_ids == (4, 2) and c.weight_version == 3
  with pytest.raises(SGLangProtocolError, match="disagree"):
    parse_generate_reply({"output_ids": [5, 2], "meta_info": meta})
  with pytest.raises(SGLangProtocolError, match="return_logprob"):
    parse_generate_reply({"output_ids": [4], "meta_info": {**meta, "output_token_logprobs": None}})
  with pytest.raises(SGLangProtocolError, match="finish_reason"):
    parse_generate_reply({"meta_info": {**meta, "finish_reason": "stop"}})
  with pytest.raises(SGLangProtocolError, match="weight_version"):
    parse_generate_reply({"meta_info": {**meta, "weight_version": "step-3"}})


def test_requests_spread_over_an_agents_servers(servers):
  engine = SGLangEngine({"solver": servers.urls}, config=FAST)

  async def main():
    return await asyncio.gather(*(engine.generate("solver", [i], SamplingParams(
        max_new_tokens=2, seed=0)) for i in range(10)))

  outs = run(main())
  assert [o.token_ids[0] for o in outs] == list(range(10))
  counts = [len(f.requests) for f in servers.fakes]
  assert sum(counts) == 10 and min(counts) >= 3, counts


def test_500s_and_aborts_are_retried(servers):
  engine = SGLangEngine({"solver": [servers.urls[0]]}, config=FAST)
  servers.fakes[0].script = ["500", "abort", "500"]
  out = run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2, seed=0)))
  assert out.token_ids == (1, 2) and len(servers.fakes[0].requests) == 4


def test_retries_exhausted_give_a_clear_error(servers):
  engine = SGLangEngine({"solver": [servers.urls[0]]}, config=FAST)
  servers.fakes[0].script = ["500"] * 10
  with pytest.raises(SGLangUnavailableError, match=r"failed 4 times.*HTTP 500"):
    run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2)))
  assert len(servers.fakes[0].requests) == 4


def test_client_errors_are_not_retried(servers):
  engine = SGLangEngine({"solver": [servers.urls[0]]}, config=FAST)
  servers.fakes[0].script = ["400"]
  with pytest.raises(SGLangRequestError, match="HTTP 400.*bad top_k"):
    run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2)))
  assert len(servers.fakes[0].requests) == 1


def test_unreachable_server_errors_and_failover(servers):
  dead = f"http://127.0.0.1:{_free_port()}"
  engine = SGLangEngine({"solver": [dead]}, config=FAST)
  with pytest.raises(SGLangUnavailableError, match=f"{dead}.*ConnectError"):
    run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2)))
  # With a live server next to the dead one, every request lands (dead one is avoided).
  engine = SGLangEngine({"solver": [dead, servers.urls[1]]}, config=FAST)

  async def main():
    return await asyncio.gather(*(engine.generate("solver", [i], SamplingParams(
        max_new_tokens=2, seed=0)) for i in range(6)))

  assert [o.token_ids[0] for o in run(main())] == list(range(6))
  health = run(engine.health())
  assert not health["ok"] and health["agents"]["solver"][servers.urls[1]]["ok"]


def test_failed_server_cools_down_then_gets_traffic_again(servers):
  cfg = SGLangEngineConfig(max_retries=2, backoff_initial_s=0.01, server_cooldown_s=2.0)
  engine = SGLangEngine({"solver": servers.urls}, config=cfg)
  servers.fakes[0].script = ["500"]
  sp = SamplingParams(max_new_tokens=2, seed=0)

  async def main():
    await engine.generate("solver", [1], sp)  # s0 answers 500, the retry lands on s1
    for _ in range(4):  # s0 is cooling down: everything goes to s1
      await engine.generate("solver", [1], sp)
    cooled = [len(f.requests) for f in servers.fakes]
    await asyncio.sleep(2.1)
    for _ in range(4):  # back in the rotation
      await engine.generate("solver", [1], sp)
    return cooled, [len(f.requests) for f in servers.fakes]

  cooled, after = run(main())
  assert cooled == [1, 5]
  assert after == [3, 7]


def test_timeouts_are_retried_then_reported(servers):
  cfg = SGLangEngineConfig(max_retries=1, backoff_initial_s=0.01, request_timeout_s=0.5)
  engine = SGLangEngine({"solver": [servers.urls[0]]}, config=cfg)
  servers.fakes[0].script = ["slow", "ok"]
  assert run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2, seed=0))).token_ids
  servers.fakes[0].script = ["slow", "slow"]
  with pytest.raises(SGLangUnavailableError, match="failed 2 times.*ReadTimeout"):
    run(engine.generate("solver", [1], SamplingParams(max_new_tokens=2)))


@pytest.fixture(scope="module")
def tiny_model(tiny_dirs):  # noqa: F811
  from mappa_jax.models import hf_io
  return hf_io.load_hf(tiny_dirs["v1"])


def test_publish_writes_then_pause_update_continue_on_every_server(servers, tiny_model,
                                                                    tiny_dirs, tmp_path):  # noqa: F811
  publisher = publish_lib.WeightPublisher(tmp_path / "pub", templates=tiny_model,
                                          tokenizer_dirs=tiny_dirs["v0"], keep_last=2)
  engine = SGLangEngine({"solver": servers.urls, "verifier": [servers.urls[0]]},
                        publisher=publisher, config=FAST)
  params = nnx.state(tiny_model, nnx.Param)  # a State: exported through the template

  async def main():
    for v in (1, 2, 3):
      await engine.publish("solver", params, v)
    return await engine.generate("solver", [1], SamplingParams(max_new_tokens=2, seed=0))

  out = run(main())
  assert out.weight_version == 3 and out.token_ids[0] == 3001
  for fake in servers.fakes:
    kinds = [k for k, _ in fake.control]
    assert kinds == ["pause", "update", "continue"] * 3
    update = [b for k, b in fake.control if k == "update"][-1]
    assert update["weight_version"] == "3"
    assert update["model_path"].endswith("solver/v00000003/hf")
  # Atomic versions, old ones pruned; the HF export is a loadable checkpoint + tokenizer.
  assert [v.version for v in publisher.versions("solver")] == [2, 3]
  latest = publisher.latest("solver")
  manifest = json.loads((latest.path / publish_lib.MANIFEST).read_text())
  assert manifest["version"] == 3 and manifest["hf"] == "hf" and manifest["orbax"] == "params"
  assert (latest.hf_dir / "tokenizer.json").is_file()
  assert not list((tmp_path / "pub" / "solver").glob(".tmp-*"))
  restored, fmt = publish_lib.load_params(latest.path, like=params)
  assert fmt == "orbax"
  for a, b in zip(jax_leaves(restored), jax_leaves(params)):
    assert bool(jnp.all(a == b))
  restored_hf, fmt = publish_lib.load_params(latest.hf_dir, like=params)
  assert fmt == "hf"
  for a, b in zip(jax_leaves(restored_hf), jax_leaves(params)):
    assert bool(jnp.all(a == b))


def jax_leaves(tree):
  return jax.tree.leaves(tree)


def test_failed_update_raises_and_still_continues(servers, tiny_model, tmp_path):
  publisher = publish_lib.WeightPublisher(tmp_path / "pub", write_orbax=False)
  engine = SGLangEngine({"solver": servers.urls}, publisher=publisher, config=FAST)
  servers.fakes[1].update_ok = False
  with pytest.raises(PublishError, match=rf"{servers.urls[1]}.*Failed to load weights"):
    run(engine.publish("solver", tiny_model, 1))
  for fake in servers.fakes:
    assert [k for k, _ in fake.control] == ["pause", "update", "continue"]
    assert not fake.paused
  assert servers.fakes[0].weight_version == "1"


def test_publisher_rejects_bad_input(tmp_path, tiny_model):
  with pytest.raises(ValueError, match="template"):
    publish_lib.WeightPublisher(tmp_path).write("a", nnx.state(tiny_model, nnx.Param), 1)
  with pytest.raises(ValueError, match="neither"):
    publish_lib.load_params(tmp_path, like=nnx.state(tiny_model, nnx.Param))
  with pytest.raises(ValueError, match="URL"):
    SGLangEngine({"a": ["localhost:3000"]})
