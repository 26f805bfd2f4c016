"""launch/check_logits.py: mappa_jax vs transformers logits on tiny checkpoints (fp32, 1e-4)."""
import importlib.util
import pathlib

import pytest

import transformers  # noqa: F401  (test extra: a missing oracle must fail, not skip)

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "launch" / "check_logits.py"
_spec = importlib.util.spec_from_file_location("check_logits", _SCRIPT)
check_logits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_logits)


@pytest.mark.parametrize("variant", ["qwen3_tied_gqa", "qwen3_untied_mha", "qwen2_untied_gqa",
                                     "qwen2_tied_mqa"])
def test_parity_on_transformers_checkpoints(hf_dirs, variant, capsys):
  assert check_logits.main([f"--hf_dir={hf_dirs[variant]}", "--seq_len=12", "--batch=3",
                            "--atol=1e-4"]) == 0
  out = capsys.readouterr().out
  assert "random token ids" in out and "PASS" in out
  diff = float(out.split("max |delta logit|")[1].split()[0])
  assert diff <= 1e-4


def test_parity_on_our_export_with_tokenizer(tiny_qwen3_dir, capsys):
  # Our exporter's config.json + safetensors must load in transformers and agree.
  assert check_logits.main([f"--hf_dir={tiny_qwen3_dir}", "--seq_len=16", "--batch=2"]) == 0
  assert "sentences encoded with tokenizer.json" in capsys.readouterr().out


def test_fails_when_the_model_differs(hf_dirs, monkeypatch, capsys):
  from mappa_jax.models import hf_io
  real_load = hf_io.load_hf

  def perturbed_load(*args, **kwargs):
    model = real_load(*args, **kwargs)
    scale = model.layers[1].post_attn_norm.scale
    scale[...] = scale[...] * 1.01  # a 1 % error in one norm
    return model

  monkeypatch.setattr(hf_io, "load_hf", perturbed_load)
  assert check_logits.main([f"--hf_dir={hf_dirs['qwen2_untied_gqa']}", "--seq_len=8",
                            "--batch=2"]) == 1
  assert "FAIL" in capsys.readouterr().out


def test_missing_config(tmp_path, capsys):
  assert check_logits.main([f"--hf_dir={tmp_path}"]) == 2
  assert "config.json" in capsys.readouterr().err
