"""The GCS stand-in (deit_jax.bench.gcs_standin): each client on the pod path reaches it
through its own route, the forms of the JSON API the clients use, and its knobs (latency,
faults, the per-object write rate). The pod path through it end to end: test_rehearsal."""

import http.client
import json
import time
import urllib.request

import numpy as np
import pytest

from deit_jax import checkpoint, files
from deit_jax.bench.gcs_standin import Fault, Remote, StandIn

BUCKET = "deit-test"


@pytest.fixture
def standin():
  with StandIn() as s:
    s.activate()
    yield s


def _http(standin, method, path, body=None, headers=None):
  """One request straight to the stand-in (no proxy): (status, headers, body)."""
  request = urllib.request.Request(standin.url + path, data=body, method=method,
                                   headers=headers or {})
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  try:
    with opener.open(request, timeout=30) as r:
      return r.status, dict(r.headers), r.read()
  except urllib.error.HTTPError as e:
    return e.code, dict(e.headers), e.read()


def test_every_client_reaches_the_standin(standin, tmp_path):
  """tf.io.gfile (through the CONNECT proxy), array_record (its emulator endpoint),
  tensorstore and google-cloud-storage (orbax's checkpoint writes and bucket check): each
  one's requests arrive, and nothing lands in a local folder instead."""
  from array_record.python import array_record_data_source, array_record_module
  # tf.io.gfile, through deit_jax.files
  root = f"gs://{BUCKET}/run"
  files.write_text(files.join(root, "notes", "a.txt"), "hello")
  assert files.read_text(files.join(root, "notes", "a.txt")) == "hello"
  assert files.listdir(files.join(root, "notes")) == ["a.txt"]
  # array_record: written locally (its writer is local-only), read from the bucket
  local = str(tmp_path / "x.array_record")
  writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
  records = [bytes([i]) * (3000 + i) for i in range(40)]
  for record in records:
    writer.write(record)
  writer.close()
  standin.put(BUCKET, "data/x.array_record-00000-of-00001", open(local, "rb").read())
  source = array_record_data_source.ArrayRecordDataSource(
      [f"gs://{BUCKET}/data/x.array_record-00000-of-00001"])
  assert len(source) == 40 and source.__getitems__([7, 31, 0]) == [records[i]
                                                                    for i in (7, 31, 0)]
  # orbax: the trainer's checkpoint manager on a gs:// workdir (the crash of a missing
  # google-cloud-storage was here), a save, the commit rule, a restore
  saver = checkpoint.TrainCheckpoints(root, every_steps=1, keep=2)
  state = {"w": np.arange(2000, dtype=np.float32), "b": np.ones(3, np.float32)}
  saver.save(1, state, {"step": 1}, {"model": "m"})
  saver.close()
  assert checkpoint.committed_steps(files.join(root, "checkpoints")) == [1]
  assert "run/checkpoints/1/commit_success.txt" in standin.names(BUCKET)
  restored = checkpoint.TrainCheckpoints(root, every_steps=1, keep=2)
  np.testing.assert_array_equal(restored.restore(1, state)[0]["w"], state["w"])
  restored.close()

  clients = standin.stats.snapshot()["clients"]
  for client in ("tensorflow", "array_record", "tensorstore", "google-cloud-storage"):
    assert clients.get(client, {}).get("requests", 0) > 0, (client, clients)
  assert not any(name.startswith("other") for name in clients), clients
  log = standin.stats.snapshot()["log"]
  ranges = {r["range"] for r in log if r["client"] == "array_record"}
  assert "bytes=-1048576" in ranges  # the footer, then one open-ended GET per record
  assert sum(1 for r in ranges if r and r.endswith("-") and r[6:-1].isdigit()) == 3
  assert not (tmp_path / "gs:").exists()


def test_json_api_forms(standin):
  """Range forms, the upload forms of the Python client (multipart, resumable), compose,
  rewrite, delete, listing with prefixes, generations and preconditions."""
  from google.cloud import storage
  bucket = storage.Client().bucket(BUCKET)
  data = bytes(range(256)) * 40
  bucket.blob("a/small").upload_from_string(data)  # multipart
  big = bucket.blob("a/big", chunk_size=256 * 1024)
  big.upload_from_string(data * 30)  # resumable, in chunks
  assert standin.get(BUCKET, "a/big") == data * 30
  path = f"/storage/v1/b/{BUCKET}/o/a%2Fsmall?alt=media"
  for header, expected in (("bytes=10-19", data[10:20]), ("bytes=10000-", data[10000:]),
                           ("bytes=-5", data[-5:]), ("bytes=10000-99999", data[10000:])):
    status, headers, body = _http(standin, "GET", path, headers={"Range": header})
    assert (status, body) == (206, expected), header
    assert headers["Content-Range"].endswith(f"/{len(data)}")
  assert _http(standin, "GET", path, headers={"Range": "bytes=99999-"})[0] == 416
  bucket.blob("b/two").compose([bucket.blob("a/small"), bucket.blob("a/small")])
  assert standin.get(BUCKET, "b/two") == data * 2
  bucket.blob("b/copy").rewrite(bucket.blob("a/small"))
  assert standin.get(BUCKET, "b/copy") == data
  listing = json.loads(_http(standin, "GET", f"/storage/v1/b/{BUCKET}/o?delimiter=%2F")[2])
  assert listing["prefixes"] == ["a/", "b/"] and "items" not in listing
  # generations: a conditional create fails on an existing object, a matching one passes
  generation = bucket.get_blob("b/copy").generation
  blob = bucket.blob("b/copy")
  with pytest.raises(Exception, match="412|Precondition"):
    blob.upload_from_string(b"x", if_generation_match=0)
  blob.upload_from_string(b"y", if_generation_match=generation)
  assert bucket.get_blob("b/copy").generation > generation
  bucket.blob("b/copy").delete()
  assert standin.get(BUCKET, "b/copy") is None


def test_knobs_latency_faults_and_write_rate(standin):
  """Latency before each answer; 503 before the body and a reset mid-body (a client's own
  retry recovers both); a stall; the per-object write rate answering 429; the counters of
  another process's stand-in through its control routes."""
  standin.put(BUCKET, "o", b"z" * 200_000)
  path = f"/storage/v1/b/{BUCKET}/o/o?alt=media"
  standin.configure(latency_s=0.2)
  start = time.time()
  assert _http(standin, "GET", path)[0] == 200
  assert time.time() - start >= 0.2
  standin.configure(latency_s=0.0, faults=[Fault("503", match="/o/o", limit=1),
                                           Fault("reset", match="/o/o", limit=1,
                                                 after_bytes=1000)])
  assert _http(standin, "GET", path)[0] == 503
  with pytest.raises((OSError, http.client.HTTPException)):  # cut after 1,000 bytes
    _http(standin, "GET", path)
  assert _http(standin, "GET", path)[2] == b"z" * 200_000  # both faults spent
  standin.configure(faults=[Fault("stall", match="/o/o", limit=1, stall_s=0.3)])
  with pytest.raises((OSError, http.client.HTTPException)):
    _http(standin, "GET", path)
  standin.configure(faults=[], write_interval_s=1.0)
  upload = f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=w"
  assert _http(standin, "POST", upload, b"1")[0] == 200
  assert _http(standin, "POST", upload, b"2")[0] == 429  # GCS: ~1 write/s per object
  assert _http(standin, "POST", upload.replace("name=w", "name=v"), b"3")[0] == 200
  remote = Remote(standin.url)
  remote.configure(latency_s=0.0, faults=[Fault("429", limit=1)])
  assert _http(standin, "GET", path)[0] == 429
  counts = remote.stats()["clients"]["other:Python-urllib"]
  assert counts["faults"] == 4 and counts["rate_limited"] == 1
  assert counts["bytes_sent"] >= 2 * 200_000


def test_remote_log_never_waits_for_the_bucket(standin, monkeypatch):
  """GCS takes about one write per second per object; a log line per step must not pay
  for it (a flush per line did: docs/performance.md, "Reading from a bucket"). Lines
  return at once, the bucket's copy is current within the interval, close leaves every
  line."""
  standin.configure(write_interval_s=1.0)
  monkeypatch.setattr(files, "REMOTE_INTERVAL_S", 1.2)  # uploads slower than the limit
  path = f"gs://{BUCKET}/run/train.log"
  log = files.AppendLog(path)
  waits = []
  for i in range(20):
    start = time.time()
    log.write(f"step {i}")
    waits.append(time.time() - start)
    time.sleep(0.05)
  assert max(waits) < 0.05, waits
  deadline = time.time() + 10
  while "step 19" not in (standin.get(BUCKET, "run/train.log") or b"").decode():
    assert time.time() < deadline, "the log was not uploaded within the interval"
    time.sleep(0.1)
  log.write("last")
  log.close()
  assert standin.get(BUCKET, "run/train.log").decode().splitlines() == [
      *[f"step {i}" for i in range(20)], "last"]
  again = files.AppendLog(path)  # a resumed run continues the file
  again.write("resumed")
  again.close()
  assert standin.get(BUCKET, "run/train.log").decode().splitlines()[-2:] == ["last",
                                                                             "resumed"]


def test_command_line_serves_until_its_bound(tmp_path):
  """``python -m deit_jax.bench.gcs_standin``: writes the exports, serves (objects kept in
  --dir), answers its control routes, and stops by itself after --max_seconds."""
  import re
  import subprocess
  import sys
  env_file = tmp_path / "standin.env"
  proc = subprocess.Popen([sys.executable, "-m", "deit_jax.bench.gcs_standin",
                           f"--dir={tmp_path / 'bucket'}", f"--env_file={env_file}",
                           "--max_seconds=4", "--latency_ms=1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 15
    while not env_file.exists():
      assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
      time.sleep(0.1)
    url = re.search(r"CLOUD_STORAGE_EMULATOR_ENDPOINT=(\S+)", env_file.read_text()).group(1)
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(
        f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=a%2Fb", data=b"xyz",
        method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as r:
      assert json.loads(r.read())["size"] == "3"
    assert Remote(url).stats()["routes"]["upload"] == 1
    assert (tmp_path / "bucket" / "objects" / BUCKET / "a%2Fb").read_bytes() == b"xyz"
    assert proc.wait(timeout=30) == 0  # --max_seconds
  finally:
    proc.kill()
