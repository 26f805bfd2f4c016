"""Our SGLang-protocol server over real HTTP on 127.0.0.1, driven by the SGLangEngine client.

Covers: client <-> server generate equal to in-process generations (same seeds); weight
hot-swap from an Orbax checkpoint and from an HF export (generations change deterministically,
weight_version advances); pause/continue; text and OpenAI chat routes; clear 400s; and
`launch/serve.py` as a real subprocess on a model dir without tokenizer files.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from flax import nnx

from mappa_jax.rollout import publish as publish_lib
from mappa_jax.rollout.engine import InProcessEngine
from mappa_jax.rollout.server import BackgroundServer, load_server
from mappa_jax.rollout.sglang_engine import SGLangEngine, SGLangEngineConfig, SGLangRequestError
from mappa_jax.rollout.types import SamplingParams
from tests.rollout.rollout_fixtures import PROMPTS, SMALL, run, tiny_dirs  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tiny_dirs):  # noqa: F811
  from mappa_jax.models import hf_io
  return {k: hf_io.load_hf(tiny_dirs[k]) for k in ("v0", "v1")}


@pytest.fixture(scope="module")
def server(tiny_dirs):  # noqa: F811
  bg = BackgroundServer(load_server(tiny_dirs["v0"], config=SMALL))
  url = bg.start()
  yield url
  bg.stop()


@pytest.fixture(scope="module")
def reference(weights):
  """An in-process engine with the same weights and buckets as the server."""
  return InProcessEngine({"default": weights["v0"]},
                         eos_token_ids=weights["v0"].config.eos_token_ids, config=SMALL)


def _sp(i):
  return SamplingParams(max_new_tokens=6, seed=100 + i, top_k=50, temperature=0.9)


def _generate_all(engine, agent):
  async def main():
    try:
      return await asyncio.gather(*(engine.generate(agent, p, _sp(i))
                                    for i, p in enumerate(PROMPTS)))
    finally:
      if isinstance(engine, SGLangEngine):
        await engine.aclose()
  return run(main())


def _model_info(url):
  return httpx.get(f"{url}/get_model_info").json()


def test_server_generations_equal_in_process_generations(server, reference):
  client = SGLangEngine({"solver": [server]})
  over_http = _generate_all(client, "solver")
  in_process = _generate_all(reference, "default")
  assert over_http == in_process  # token ids, logprobs (exact floats), finish, version
  assert {c.weight_version for c in over_http} == {0}


def test_hot_swap_from_orbax_then_hf(server, reference, weights, tiny_dirs, tmp_path):  # noqa: F811
  before = _generate_all(SGLangEngine({"solver": [server]}), "solver")
  orbax_only = publish_lib.WeightPublisher(tmp_path / "orbax", write_hf=False)
  client = SGLangEngine({"solver": [server]}, publisher=orbax_only,
                        config=SGLangEngineConfig(push_format="orbax"))
  v1 = nnx.state(weights["v1"], nnx.Param)
  run(client.publish("solver", v1, 7))
  assert _model_info(server)["weight_version"] == "7"
  swapped = _generate_all(client, "solver")
  run(reference.publish("default", v1, 7))
  assert swapped == _generate_all(reference, "default")  # exactly the new weights' samples
  assert [c.token_ids for c in swapped] != [c.token_ids for c in before]
  assert {c.weight_version for c in swapped} == {7}

  # The same weights through the HF export (what real SGLang loads): same samples, version 8.
  hf_only = publish_lib.WeightPublisher(tmp_path / "hf", write_orbax=False,
                                        templates=weights["v0"], tokenizer_dirs=tiny_dirs["v0"])
  client = SGLangEngine({"solver": [server]}, publisher=hf_only)
  run(client.publish("solver", v1, 8))
  via_hf = _generate_all(client, "solver")
  assert [c.token_ids for c in via_hf] == [c.token_ids for c in swapped]
  assert {c.weight_version for c in via_hf} == {8}

  # Back to the original weights (a published version dir holding both copies).
  both = publish_lib.WeightPublisher(tmp_path / "both", templates=weights["v0"])
  published = both.write("solver", weights["v0"], 9)
  r = httpx.post(f"{server}/update_weights_from_disk",
                 json={"model_path": str(published.path), "weight_version": "9"}, timeout=60)
  assert r.status_code == 200 and r.json()["success"], r.text
  assert "orbax" in r.json()["message"]
  restored = _generate_all(SGLangEngine({"solver": [server]}), "solver")
  assert [c.token_ids for c in restored] == [c.token_ids for c in before]
  run(reference.publish("default", weights["v0"], 0))


def test_pause_and_continue(server):
  client = SGLangEngine({"solver": [server]})

  async def main():
    try:
      await client.pause()
      assert (await client.health())["paused"]
      # A request sent straight to the paused server waits there (not just in the client).
      async with httpx.AsyncClient(timeout=30) as http:
        task = asyncio.ensure_future(http.post(f"{server}/generate", json={
            "input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2, "sampling_seed": 0}}))
        await asyncio.sleep(0.5)
        assert not task.done()
        await client.resume()
        reply = (await asyncio.wait_for(task, 30)).json()
      assert len(reply["output_ids"]) >= 1
    finally:
      await client.aclose()

  run(main())


def test_text_generate_and_openai_chat(server, tiny_dirs):  # noqa: F811
  from mappa_jax.models.tokenizer import Tokenizer
  tok = Tokenizer.from_dir(tiny_dirs["v0"])
  sp = {"max_new_tokens": 5, "sampling_seed": 3}
  by_text = httpx.post(f"{server}/generate", json={
      "text": "hello world", "sampling_params": sp, "return_logprob": True}, timeout=60).json()
  by_ids = httpx.post(f"{server}/generate", json={
      "input_ids": tok.encode("hello world"), "sampling_params": sp}, timeout=60).json()
  assert by_text["output_ids"] == by_ids["output_ids"]
  assert by_text["text"] == tok.decode(by_text["output_ids"], skip_special_tokens=True)
  assert "output_token_logprobs" not in by_ids["meta_info"]  # only with return_logprob
  batch = httpx.post(f"{server}/generate", json={
      "input_ids": [[1, 2], [3, 4, 5]], "sampling_params": sp}, timeout=60).json()
  assert isinstance(batch, list) and len(batch) == 2

  import openai
  client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=60)
  reply = client.chat.completions.create(
      model="tiny", messages=[{"role": "user", "content": "Rate 2+2=4 from 0 to 10."}],
      max_tokens=6, seed=1, temperature=1.0, n=2)
  assert len(reply.choices) == 2 and isinstance(reply.choices[0].message.content, str)
  prompt = tok.apply_chat_template([{"role": "user", "content": "Rate 2+2=4 from 0 to 10."}])
  assert reply.usage.prompt_tokens == len(prompt)


def test_bad_requests_get_clear_400s(server, tmp_path):
  def post(route, body):
    return httpx.post(f"{server}{route}", json=body, timeout=60)

  r = post("/generate", {"input_ids": [1], "sampling_params": {"stop": ["\n"]}})
  assert r.status_code == 400 and "stop_token_ids" in r.json()["message"]
  r = post("/generate", {"sampling_params": {}})
  assert r.status_code == 400 and "input_ids" in r.json()["message"]
  r = post("/generate", {"input_ids": [1, 10**6]})
  assert r.status_code == 400 and "vocabulary" in r.json()["message"]
  r = httpx.post(f"{server}/generate", content=b"{not json", timeout=10)
  assert r.status_code == 400
  r = post("/update_weights_from_disk", {"model_path": str(tmp_path / "missing")})
  assert r.status_code == 400 and r.json()["success"] is False
  assert "not a directory" in r.json()["message"]
  from mappa_jax.models import tiny
  other = tiny.write_tiny_model(tmp_path / "qwen2", architecture="qwen2", with_tokenizer=False)
  r = post("/update_weights_from_disk", {"model_path": str(other)})
  assert r.status_code == 400 and r.json()["success"] is False
  assert "wrong architecture" in r.json()["message"]
  assert _model_info(server)["weight_version"] != str(None)
  client = SGLangEngine({"solver": [server]})
  with pytest.raises(SGLangRequestError, match="top_p"):
    run(client.generate("solver", [1], SamplingParams(top_p=0.0)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_launch_serve_subprocess_without_tokenizer(tiny_dirs):  # noqa: F811
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "launch" / "serve.py"), f"--model={tiny_dirs['notok']}",
       f"--port={port}", "--eos_token_ids=2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 120
    while True:
      assert proc.poll() is None, proc.stdout.read()
      try:
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.monotonic() < deadline, "launch/serve.py did not come up"
      time.sleep(0.5)
    assert _model_info(url)["tokenizer_path"] is None
    r = httpx.post(f"{url}/generate", json={
        "input_ids": [3, 4, 5], "sampling_params": {"max_new_tokens": 3, "sampling_seed": 1},
        "return_logprob": True}, timeout=120).json()
    assert 1 <= len(r["output_ids"]) <= 3 and "text" not in r
    assert len(r["meta_info"]["output_token_logprobs"]) == len(r["output_ids"])
    r = httpx.post(f"{url}/generate", json={"text": "hi"}, timeout=30)
    assert r.status_code == 400 and "send input_ids" in r.json()["message"]
  finally:
    proc.terminate()
    proc.wait(timeout=30)
