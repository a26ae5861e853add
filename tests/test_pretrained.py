"""Pretrained weights by name, through a real HTTP download from a local server."""

import functools
import hashlib
import http.server
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require
from deit_jax.models import create_model, pretrained

torch = require("torch")
timm = require("timm")

NAME = "deit_tiny_patch16_224"


class _Server:
  """Serves a directory on 127.0.0.1, counting requests; stops itself after 300 s."""

  def __init__(self, root):
    self.requests = []
    server = self

    class Handler(http.server.SimpleHTTPRequestHandler):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(root), **kwargs)

      def do_GET(self):
        server.requests.append(self.path)
        super().do_GET()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/deit"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
    self.timer = threading.Timer(300, self.httpd.shutdown)
    self.timer.start()

  def close(self):
    self.timer.cancel()
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
  (tmp_path / "www" / "deit").mkdir(parents=True)
  srv = _Server(tmp_path / "www")
  monkeypatch.setenv("DEIT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("DEIT_JAX_WEIGHTS_URL", srv.url)
  yield srv, tmp_path / "www" / "deit"
  srv.close()


@functools.lru_cache(maxsize=1)
def _official_like_file():
  """(bytes, torch model): a random deit_tiny in the official checkpoint layout."""
  import io
  reference = timm.create_model(NAME, pretrained=False)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in reference.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.02)
  buffer = io.BytesIO()
  torch.save({"model": reference.state_dict(), "epoch": 299}, buffer)
  return buffer.getvalue(), reference


def _cache_files(tmp_path):
  return sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*")
                if p.is_file()) if (tmp_path / "cache").exists() else []


def test_download_verify_convert_once_and_reuse(server, tmp_path, monkeypatch):
  srv, www = server
  payload, reference = _official_like_file()
  digest = hashlib.sha256(payload).hexdigest()
  filename = f"{NAME}-{digest[:8]}.pth"  # the official naming: hash prefix in the name
  (www / filename).write_bytes(payload)
  monkeypatch.setitem(pretrained.WEIGHTS, NAME, (f"https://example.invalid/deit/{filename}",
                                                 digest[:8]))

  model = create_model(NAME, pretrained=True)
  model.eval()
  reference.eval()
  x = np.random.RandomState(0).randn(2, 224, 224, 3).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  assert np.abs(np.asarray(model(jnp.asarray(x))) - expected).max() <= 1e-4
  assert srv.requests == [f"/deit/{filename}"]
  assert (tmp_path / "cache" / "downloads" / filename).read_bytes() == payload

  # Second use: nothing downloaded or converted again; another class count keeps fresh heads.
  converted = tmp_path / "cache" / "params" / f"{NAME}.npz"
  assert _cache_files(tmp_path) == [f"downloads/{filename}", f"params/{NAME}.npz"]
  stamp = converted.stat().st_mtime_ns
  again = create_model(NAME, pretrained=True, num_classes=10, seed=3)
  fresh = create_model(NAME, num_classes=10, seed=3)
  assert srv.requests == [f"/deit/{filename}"] and converted.stat().st_mtime_ns == stamp
  np.testing.assert_array_equal(again.head.kernel[...], fresh.head.kernel[...])
  np.testing.assert_array_equal(again.blocks[0].mlp.fc1.kernel[...],
                                model.blocks[0].mlp.fc1.kernel[...])

  # A parameter file whose recorded download fails the table's checksum (the table
  # changed) is converted again from the verified download, without a request.
  monkeypatch.setitem(pretrained.WEIGHTS, NAME, (f"https://example.invalid/deit/{filename}",
                                                 digest))
  with np.load(converted) as f:
    assert str(f[pretrained.SOURCE_KEY]) == digest
  stale = dict(np.load(converted))
  stale[pretrained.SOURCE_KEY] = np.array("0" * 64)
  np.savez(converted, **stale)
  third = create_model(NAME, pretrained=True)
  assert srv.requests == [f"/deit/{filename}"] and pretrained._source(str(converted)) == digest
  np.testing.assert_array_equal(third.pos_embed[...], model.pos_embed[...])

  # A full 64-digit digest is checked in full: the last digit counts too.
  path = tmp_path / "cache" / "downloads" / filename
  pretrained._check(str(path), "u", digest)
  wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
  with pytest.raises(pretrained.PretrainedError, match="checksum mismatch"):
    pretrained._check(str(path), "u", wrong)
  assert not path.exists()


def test_corrupted_download_is_refused_and_nothing_cached(server, tmp_path):
  srv, www = server
  url, prefix = pretrained.WEIGHTS[NAME]  # the real entry, served from the local mirror
  (www / url.rsplit("/", 1)[1]).write_bytes(b"not the weights" * 1000)
  with pytest.raises(pretrained.PretrainedError, match="checksum mismatch") as info:
    create_model(NAME, pretrained=True)
  assert prefix in str(info.value) and "nothing was cached" in str(info.value)
  assert len(srv.requests) == 1
  assert _cache_files(tmp_path) == []


def test_no_network_names_url_and_where_to_put_the_file(tmp_path, monkeypatch):
  import socket
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv("DEIT_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("DEIT_JAX_WEIGHTS_URL", f"http://127.0.0.1:{port}/deit")
  with pytest.raises(pretrained.PretrainedError) as info:
    pretrained.params_file("deit_base_patch16_224")
  message = str(info.value)
  assert f"http://127.0.0.1:{port}/deit/deit_base_patch16_224-b5f2ef4d.pth" in message
  assert str(tmp_path / "cache" / "downloads" / "deit_base_patch16_224-b5f2ef4d.pth") in message
  assert "\n" not in message and _cache_files(tmp_path) == []


def test_unknown_pretrained_name():
  with pytest.raises(ValueError, match="no pretrained weights named 'cifar_resnet8'"):
    create_model("cifar_resnet8", pretrained=True)
  with pytest.raises(ValueError, match="unknown model"):
    create_model("deit_huge_patch16_224", pretrained=True)


def test_init_from_a_registry_name(server, tmp_path, monkeypatch):
  from deit_jax import builder, optim, sharding, train_step as ts
  srv, www = server
  payload, reference = _official_like_file()
  digest = hashlib.sha256(payload).hexdigest()
  (www / "w.pth").write_bytes(payload)
  monkeypatch.setitem(pretrained.WEIGHTS, NAME, ("https://example.invalid/deit/w.pth", digest))
  overrides = {"num_classes": 10, "img_size": 112}
  model = create_model(NAME, **overrides)
  tx = optim.adamw(optim.warmup_cosine(1e-3, 10, 1), nnx.to_pure_dict(ts.split_model(model)[1]))
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  shardings = ts.state_shardings(model, tx, mesh)
  state = jax.device_put(ts.init_state(model, tx, seed=0), shardings)
  state = builder._init_from(state, NAME, overrides, shardings)
  np.testing.assert_array_equal(state.params["blocks"][3]["mlp"]["fc2"]["kernel"],
                                reference.blocks[3].mlp.fc2.weight.detach().numpy().T)
  assert state.params["pos_embed"].shape == (1, 1 + 7 * 7, 192)  # resampled from 14x14
  assert state.params["head"]["kernel"].shape == (192, 10)
  np.testing.assert_array_equal(state.ema["cls_token"], state.params["cls_token"])


def test_pretrained_true_works_with_nothing_else_imported(tmp_path):
  """timm's habit, in a fresh process: ``from deit_jax.models import create_model`` and
  ``pretrained=True``, no ``import deit_jax.pretrained``. Served from a pre-seeded cache;
  a model not cached goes as far as its download (a port nobody listens on here)."""
  import os
  import socket
  import subprocess
  import sys
  from deit_jax.models import torch_weights
  seeded = create_model(NAME, seed=5)
  (tmp_path / "cache" / "params").mkdir(parents=True)
  np.savez(tmp_path / "cache" / "params" / f"{NAME}.npz", **torch_weights.to_state_dict(seeded),
           **{pretrained.SOURCE_KEY: np.array(pretrained.WEIGHTS[NAME][1] + "0" * 56)})
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = (
      "import sys\n"
      "from deit_jax.models import create_model\n"
      f"model = create_model({NAME!r}, pretrained=True)\n"
      "print(repr(float(model.pos_embed[...].sum())))\n"
      "print(sorted(m for m in sys.modules if m.startswith(('deit_jax', 'orbax'))))\n"
      "try:\n"
      "  create_model('deit_small_patch16_224', pretrained=True)\n"
      "except Exception as e:\n"
      "  print(type(e).__name__, e)\n")
  env = dict(os.environ, DEIT_JAX_CACHE=str(tmp_path / "cache"),
             DEIT_JAX_WEIGHTS_URL=f"http://127.0.0.1:{port}/deit")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  cached, imported, missing = out.stdout.strip().splitlines()[-3:]
  assert float(cached) == float(seeded.pos_embed[...].sum())
  # The models layer alone: no training checkpoint code, no orbax.
  assert not [m for m in eval(imported) if m.startswith("orbax")
              or m in ("deit_jax.checkpoint", "deit_jax.builder")], imported
  assert missing.startswith("PretrainedError cannot download "
                            f"http://127.0.0.1:{port}/deit/deit_small_patch16_224-cd65a155.pth")
