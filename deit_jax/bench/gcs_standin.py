"""A local stand-in for Google Cloud Storage: one server on 127.0.0.1 that every client on
the pod path reaches, with knobs for latency, bandwidth and faults, and counters.

    python -m deit_jax.bench.gcs_standin --dir=/tmp/bucket [--latency_ms=30]
    # prints the exports that send every client to it; Ctrl-C stops it

Serves the JSON API (bucket and object metadata, listing, media download with every Range
form, simple / multipart / resumable uploads, rewrite, copy, compose, delete, object
generations and the ``ifGenerationMatch`` family of preconditions) and media reads in the
``storage.googleapis.com/BUCKET/OBJECT`` form (``deit_jax.bench.gcs_routes``). Objects are
files under ``<dir>/objects/<bucket>/``, so a stand-in started again on the same folder
serves the same bucket.

How each client is pointed here (``StandIn.environ``):

- array_record's reader (riegeli ``GcsReader``, google-cloud-cpp):
  ``CLOUD_STORAGE_EMULATOR_ENDPOINT=http://127.0.0.1:PORT``.
- orbax's bucket check (the Python ``google-cloud-storage`` client):
  ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``.
- tensorstore (orbax's checkpoint writes): ``TENSORSTORE_GCS_HTTP_URL``.
- TensorFlow's GCS filesystem (``tf.io.gfile``; TFDS and ``deit_jax.files`` use it) has no
  endpoint setting. Its libcurl honours ``HTTPS_PROXY``: it sends ``CONNECT
  www.googleapis.com:443`` here, and the stand-in answers with TLS under a certificate
  from a CA it makes at start (``CURL_CA_BUNDLE``). ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` and
  ``NO_GCE_CHECK`` keep it from looking for credentials. ``NO_PROXY`` keeps loopback (the
  JAX coordinator's gRPC) off the proxy.

Knobs (``StandIn.configure``, or ``Remote(url).configure`` from another process):
``latency_s`` before each answer, ``bandwidth`` bytes/s per connection, ``faults`` (a list
of ``Fault``: 429/503 before the body, a reset mid-body, a stall), and ``write_interval_s``:
a second write to one object sooner than that answers 429, as GCS does past about one
write per second per object. Counters (``stats``): requests, bytes sent and received and
connections per client, requests per route, and a log of the last 2,000 requests. Bounds:
``max_requests`` and ``max_seconds``; past either, every request answers 503.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import http.server
import json
import os
import random
import re
import shutil
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from deit_jax.bench import gcs_routes

TLS_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")


@dataclasses.dataclass
class Fault:
  """An injected fault. ``kind``: an HTTP status such as ``429``, ``503`` or ``403``
  (answered before any body), ``reset``
  (a media body cut after ``after_bytes`` and the connection closed) or ``stall`` (no
  answer for ``stall_s``, then the connection closed). Applies to requests whose ``"METHOD
  path?query"`` matches the regular expression ``match``, with probability ``rate`` (a
  seeded generator), at most ``limit`` times (None: no limit)."""
  kind: str
  match: str = ""
  rate: float = 1.0
  limit: int | None = None
  after_bytes: int = 1024
  stall_s: float = 30.0
  fired: int = 0

  def __post_init__(self):
    if self.kind not in ("reset", "stall") and not (
        self.kind.isdigit() and 400 <= int(self.kind) < 600):
      raise ValueError(f"fault kind {self.kind!r}: an HTTP status 4xx/5xx, reset or stall")


@dataclasses.dataclass(frozen=True)
class Object:
  bucket: str
  name: str
  path: str
  size: int
  generation: int

  def resource(self) -> dict:
    stamp = datetime.datetime.fromtimestamp(self.generation / 1e6, datetime.timezone.utc)
    stamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"kind": "storage#object", "id": f"{self.bucket}/{self.name}/{self.generation}",
            "name": self.name, "bucket": self.bucket, "generation": str(self.generation),
            "metageneration": "1", "contentType": "application/octet-stream",
            "size": str(self.size), "timeCreated": stamp, "updated": stamp,
            "storageClass": "STANDARD", "etag": f"CL{self.generation}E="}


class Objects:
  """A bucket's objects as files: ``<root>/<bucket>/<name, percent-encoded>``. An object's
  generation is its file's modification time in microseconds, made unique and increasing
  by the writer. Writes are atomic (a temporary file, then a rename); callers hold the
  stand-in's lock around a read-check-write."""

  def __init__(self, root: str):
    self.root = root
    self._last_generation = 0

  def _path(self, bucket: str, name: str) -> str:
    return os.path.join(self.root, bucket, urllib.parse.quote(name, safe=""))

  def stat(self, bucket: str, name: str) -> Object | None:
    path = self._path(bucket, name)
    try:
      st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
      return None
    return Object(bucket, name, path, st.st_size, st.st_mtime_ns // 1000)

  def write(self, bucket: str, name: str, data: bytes) -> Object:
    path = self._path(bucket, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    generation = max(time.time_ns() // 1000, self._last_generation + 1)
    self._last_generation = generation
    with open(path + ".~partial", "wb") as f:
      f.write(data)
    os.utime(path + ".~partial", ns=(generation * 1000, generation * 1000))
    os.replace(path + ".~partial", path)
    return Object(bucket, name, path, len(data), generation)

  def delete(self, bucket: str, name: str) -> None:
    os.remove(self._path(bucket, name))

  def read(self, obj: Object) -> bytes:
    with open(obj.path, "rb") as f:
      return f.read()

  def chunks(self, obj: Object, start: int, stop: int, size: int):
    """The bytes [start, stop) of ``obj`` in chunks of ``size`` (read as they are sent)."""
    with open(obj.path, "rb") as f:
      f.seek(start)
      while start < stop:
        chunk = f.read(min(size, stop - start))
        if not chunk:
          return
        start += len(chunk)
        yield chunk

  def names(self, bucket: str, prefix: str = "") -> list[str]:
    try:
      files = os.listdir(os.path.join(self.root, bucket))
    except FileNotFoundError:
      return []
    names = (urllib.parse.unquote(f) for f in files if not f.endswith(".~partial"))
    return sorted(n for n in names if n.startswith(prefix))


class _Stats:
  def __init__(self, log_size: int = 2000):
    self.lock = threading.Lock()
    self.per_client = collections.defaultdict(collections.Counter)
    self.per_route = collections.Counter()
    self.log = collections.deque(maxlen=log_size)

  def snapshot(self) -> dict:
    with self.lock:
      return {"clients": {c: dict(v) for c, v in self.per_client.items()},
              "routes": dict(self.per_route), "log": list(self.log)}


class StandIn:
  """The server. ``with StandIn() as s:`` serves on a free loopback port from a thread;
  ``s.environ()`` is what a process needs to reach it, ``s.activate()`` sets that in this
  process's environment until ``deactivate`` or ``stop``. ``directory``: where objects,
  the CA and certificate live (default: a temporary folder, removed at ``stop``)."""

  def __init__(self, directory: str | None = None, *, port: int = 0, latency_s: float = 0.0,
               bandwidth: float | None = None, faults: list[Fault] | None = None,
               write_interval_s: float = 0.0, max_requests: int = 2_000_000,
               max_seconds: float = 6 * 3600, seed: int = 0):
    self.latency_s, self.bandwidth = latency_s, bandwidth
    self.faults = list(faults or [])
    self.write_interval_s = write_interval_s
    self.max_requests, self.max_seconds = max_requests, max_seconds
    self.random = random.Random(seed)
    self.lock = threading.Lock()
    self._own_dir = directory is None
    self.dir = directory or tempfile.mkdtemp(prefix="gcs_standin_")
    self.objects = Objects(os.path.join(self.dir, "objects"))
    self.last_write: dict[tuple[str, str], float] = {}
    self.uploads: dict[str, dict] = {}
    self.stats = _Stats()
    self.requests = 0
    self.started = time.time()
    self.ca_file, self.tls = _tls_context(os.path.join(self.dir, "tls"))
    self.server = _Server(("127.0.0.1", port), gcs_routes.Handler)  # loopback only
    self.server.standin = self
    self.port = self.server.server_address[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self._saved_env = None

  # ------------------------------------------------------------------ lifecycle
  def start(self) -> StandIn:
    threading.Thread(target=self.server.serve_forever, daemon=True,
                     name="gcs-standin").start()
    return self

  def stop(self) -> None:
    self.deactivate()
    self.server.shutdown()
    self.server.server_close()
    if self._own_dir:
      shutil.rmtree(self.dir, ignore_errors=True)

  def __enter__(self) -> StandIn:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def environ(self) -> dict[str, str]:
    """The environment variables that send every client here."""
    return environ_for(self.url, self.ca_file)

  def activate(self) -> StandIn:
    """Sets ``environ()`` in this process (and so in the processes it starts)."""
    if self._saved_env is None:
      env = self.environ()
      self._saved_env = {k: os.environ.get(k) for k in env}
      os.environ.update(env)
    return self

  def deactivate(self) -> None:
    if self._saved_env is not None:
      for key, value in self._saved_env.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value
      self._saved_env = None

  # ------------------------------------------------------------------ knobs, counters
  def configure(self, **knobs) -> None:
    """Sets ``latency_s``, ``bandwidth``, ``write_interval_s`` or ``faults`` (``Fault``s
    or their dicts)."""
    with self.lock:
      for key, value in knobs.items():
        if key == "faults":
          value = [v if isinstance(v, Fault) else Fault(**v) for v in value or []]
        elif key not in ("latency_s", "bandwidth", "write_interval_s"):
          raise ValueError(f"unknown stand-in knob {key!r}")
        setattr(self, key, value)

  def reset_stats(self) -> None:
    self.stats = _Stats()

  def fault_for(self, request_line: str, *, body: bool) -> Fault | None:
    """The fault this request draws, if any; ``body``: the reset faults (which act on a
    body being sent), else the others."""
    with self.lock:
      for fault in self.faults:
        if (fault.kind == "reset") != body:
          continue
        if fault.limit is not None and fault.fired >= fault.limit:
          continue
        if fault.match and not re.search(fault.match, request_line):
          continue
        if self.random.random() < fault.rate:
          fault.fired += 1
          return fault
    return None

  # ------------------------------------------------------------------ contents
  def put(self, bucket: str, name: str, data: bytes) -> None:
    with self.lock:
      self.objects.write(bucket, name, data)

  def get(self, bucket: str, name: str) -> bytes | None:
    obj = self.objects.stat(bucket, name)
    return None if obj is None else self.objects.read(obj)

  def names(self, bucket: str, prefix: str = "") -> list[str]:
    return self.objects.names(bucket, prefix)


def environ_for(url: str, ca_file: str) -> dict[str, str]:
  """The variables that point every client at the stand-in at ``url`` (the module
  docstring says which client reads which)."""
  loopback = "127.0.0.1,localhost"
  return {
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "HTTPS_PROXY": url, "https_proxy": url,
      "NO_PROXY": loopback, "no_proxy": loopback,
      "CURL_CA_BUNDLE": ca_file,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "standin-token",
      "NO_GCE_CHECK": "true",
      "GOOGLE_CLOUD_PROJECT": "standin-project",
  }


def _tls_context(directory: str) -> tuple[str, ssl.SSLContext]:
  """A CA, and a certificate for Google's storage hosts signed by it (openssl); returns
  (the CA file, the server context presenting the certificate)."""
  os.makedirs(directory, exist_ok=True)
  ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
  key, csr, cert = (os.path.join(directory, n) for n in ("host.key", "host.csr", "host.pem"))
  if not os.path.exists(cert):
    ext = os.path.join(directory, "host.ext")
    with open(ext, "w") as f:
      f.write("subjectAltName=" + ",".join(
          [f"DNS:{h}" for h in TLS_HOSTS] + ["DNS:*.googleapis.com", "DNS:localhost",
                                             "IP:127.0.0.1"]) + "\n")

    def openssl(*args):
      subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "30", "-subj", "/CN=deit-jax GCS stand-in CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=www.googleapis.com")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert + ".partial", "-days", "30", "-extfile", ext)
    os.replace(cert + ".partial", cert)
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(cert, key)
  return ca, context


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 256

  def handle_error(self, request, client_address):
    pass  # a client hanging up mid-body (an open-ended range read) is no error


class Remote:
  """A stand-in in another process, through its control routes: knobs and counters."""

  def __init__(self, url: str):
    self.url = url.rstrip("/")

  def _call(self, path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(self.url + path, data=data,
                                     headers={"User-Agent": "deit-jax-standin"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
      return json.loads(response.read() or b"{}")

  def configure(self, **knobs) -> None:
    if "faults" in knobs:
      knobs["faults"] = [dataclasses.asdict(f) if isinstance(f, Fault) else f
                         for f in knobs["faults"] or []]
    self._call("/_standin/config", knobs)

  def stats(self) -> dict:
    return self._call("/_standin/stats")

  def reset_stats(self) -> None:
    self._call("/_standin/reset", {})


def _main(argv=None) -> None:
  import argparse
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dir", required=True, help="where the objects live (kept)")
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--latency_ms", type=float, default=0.0)
  p.add_argument("--bandwidth_mbps", type=float, default=None,
                 help="MB/s per connection (default: unlimited)")
  p.add_argument("--write_interval_s", type=float, default=0.0)
  p.add_argument("--max_seconds", type=float, default=6 * 3600)
  p.add_argument("--max_requests", type=int, default=2_000_000)
  p.add_argument("--env_file", default=None, help="also write the exports here")
  a = p.parse_args(argv)
  standin = StandIn(a.dir, port=a.port, latency_s=a.latency_ms / 1e3,
                    bandwidth=a.bandwidth_mbps and a.bandwidth_mbps * 1e6,
                    write_interval_s=a.write_interval_s, max_seconds=a.max_seconds,
                    max_requests=a.max_requests)
  exports = "".join(f"export {k}={v}\n" for k, v in standin.environ().items())
  if a.env_file:
    with open(a.env_file + ".partial", "w") as f:
      f.write(exports)
    os.replace(a.env_file + ".partial", a.env_file)
  print(exports + f"# GCS stand-in at {standin.url}, objects in {a.dir} (Ctrl-C stops it)",
        flush=True)
  standin.start()
  try:
    time.sleep(a.max_seconds)
  except KeyboardInterrupt:
    pass
  standin.stop()


if __name__ == "__main__":
  _main(sys.argv[1:])
