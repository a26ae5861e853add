"""The GCS stand-in's request handler (``deit_jax.bench.gcs_standin``): the JSON API routes,
the ``CONNECT`` proxy that TensorFlow's filesystem comes through, and the knobs applied to
each request (latency, bandwidth, faults, the per-object write rate)."""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import time
import urllib.parse
import uuid

CHUNK = 64 * 1024

_OBJECT = re.compile(r"^/(?:download/)?storage/v1/b/([^/]+)/o/([^/]+)$")
_COPY = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)/(rewriteTo|copyTo)/b/([^/]+)/o/([^/]+)$")
_COMPOSE = re.compile(r"^/storage/v1/b/([^/]+)/o/([^/]+)/compose$")
_LIST = re.compile(r"^/storage/v1/b/([^/]+)/o/?$")
_BUCKET = re.compile(r"^/storage/v1/b/([^/]+)/?$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")


class _Abort(Exception):
  """Ends the connection without an answer (an injected reset or stall)."""


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse its connections
  server_version = "deit-jax-gcs-standin"

  # ----------------------------------------------------------------- connection
  def setup(self):
    super().setup()
    self.tunnelled = False
    self.client = None
    self.standin = self.server.standin

  def log_message(self, *args):
    pass

  def _count(self, key: str, n: int = 1) -> None:
    stats = self.standin.stats
    with stats.lock:
      stats.per_client[self.client or "unknown"][key] += n

  def do_CONNECT(self):
    """TensorFlow's libcurl asks for a tunnel to www.googleapis.com:443 (or
    storage.googleapis.com): answer it with TLS, then serve the JSON API inside it."""
    host = self.path.split(":")[0]
    self.client = "tensorflow"  # only TF's filesystem comes through the proxy
    self._count("connections")
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    try:
      tls = self.standin.tls.wrap_socket(self.connection, server_side=True)
    except OSError:
      self.close_connection = True
      return
    self.connection = self.request = tls
    self.rfile = tls.makefile("rb", -1)
    self.wfile = socketserver._SocketWriter(tls)
    self.tunnelled, self.tunnel_host = True, host

  def handle_one_request(self):
    # Bytes received: the request line and headers are read by the base class; count the
    # raw line here and the body where it is read.
    try:
      super().handle_one_request()
    except _Abort:
      self.close_connection = True
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
      self.close_connection = True

  def _begin(self) -> bool:
    """Common to every request: client, counters, bounds, latency, a fault before the
    body. False when the request was answered here."""
    s = self.standin
    self._count("requests")
    self._count("bytes_received", len(self.requestline) + len(str(self.headers)))
    if self.path.startswith("/_standin/"):
      return True
    with s.lock:
      s.requests += 1
      over = s.requests > s.max_requests or time.time() - s.started > s.max_seconds
    if over:
      self._json(503, {"error": "stand-in bound reached (max_requests / max_seconds)"})
      return False
    if s.latency_s:
      time.sleep(s.latency_s)
    fault = s.fault_for(f"{self.command} {self.path}", body=False)
    if fault is not None:
      self._count("faults")
      self._fault = fault.kind
      if fault.kind == "stall":
        self._log(0, 0)
        time.sleep(fault.stall_s)
        raise _Abort()
      self._error(int(fault.kind), "injected by the stand-in")
      return False
    return True

  def _log(self, status: int, sent: int, **extra) -> None:
    stats = self.standin.stats
    route = _route_name(self.command, self.path)
    with stats.lock:
      stats.per_route[route] += 1
      stats.log.append({"client": self.client, "method": self.command,
                        "path": self.path[:300], "route": route,
                        "range": self.headers.get("Range"), "status": status,
                        "sent": sent, "t": round(time.time() - self.standin.started, 4),
                        "object": self._object, "fault": self._fault, **extra})

  # ----------------------------------------------------------------- answers
  def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
    self.send_response(status)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    sent = self._write(body) if self.command != "HEAD" else 0
    self._log(status, sent)

  def _json(self, status: int, payload: dict) -> None:
    self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

  def _error(self, status: int, message: str) -> None:
    self._json(status, {"error": {"code": status, "message": message,
                                  "errors": [{"message": message}]}})

  def _write(self, body, reset=None) -> int:
    """Sends ``body`` (bytes, or an iterable of byte chunks) at the bandwidth knob; returns
    the bytes sent. The client may hang up first: an open-ended range read stops reading
    once it has its record. ``reset``: a Fault that closes the connection after its
    ``after_bytes``."""
    s, sent = self.standin, 0
    start = time.time()
    chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)] \
        if isinstance(body, bytes) else body
    try:
      for chunk in chunks:
        if reset is not None and sent + len(chunk) > reset.after_bytes:
          chunk = chunk[:max(0, reset.after_bytes - sent)]
          self.wfile.write(chunk)
          sent += len(chunk)
          self.wfile.flush()
          self.close_connection = True
          raise _Abort()
        self.wfile.write(chunk)
        sent += len(chunk)
        if s.bandwidth:
          ahead = sent / s.bandwidth - (time.time() - start)
          if ahead > 0:
            time.sleep(ahead)
    except (BrokenPipeError, ConnectionResetError):
      self.close_connection = True
    finally:
      self._count("bytes_sent", sent)
    return sent

  def _read_body(self) -> bytes:
    """The request body: Content-Length or chunked (TF's resumable uploads)."""
    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
      parts = []
      while True:
        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
          while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
          break
        parts.append(self.rfile.read(size))
        self.rfile.readline()
      body = b"".join(parts)
    else:
      body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
    self._count("bytes_received", len(body))
    return body

  # ----------------------------------------------------------------- methods
  def do_GET(self):
    self._dispatch()

  do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

  def _dispatch(self):
    self._object = None  # the object a write created (for the log)
    self._fault = None  # the injected fault this request drew
    if self.client is None:  # a connection's first request names its client
      self.client = client_of(self.headers.get("User-Agent", ""), self.tunnelled)
      self._count("connections")
    stats = self.standin.stats
    with stats.lock:  # requests in flight, and the most at once, per client
      counter = stats.per_client[self.client]
      counter["in_flight"] += 1
      counter["max_in_flight"] = max(counter["max_in_flight"], counter["in_flight"])
    try:
      self._serve()
    finally:
      with stats.lock:
        stats.per_client[self.client]["in_flight"] -= 1

  def _serve(self):
    body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
    if not self._begin():
      return
    url = urllib.parse.urlsplit(self.path)
    path, query = url.path, dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    if path.startswith("/_standin/"):
      return self._control(path, body)
    try:
      return self._route(path, query, body)
    except (_Abort, BrokenPipeError, ConnectionResetError):
      raise
    except Exception as e:  # a stand-in bug: answer 500 with the reason
      self._error(500, f"stand-in: {type(e).__name__}: {e}")

  def _route(self, path: str, query: dict, body: bytes):
    m = self.command
    host = self.tunnel_host if self.tunnelled else ""
    if m in ("GET", "HEAD") and (match := _OBJECT.match(path)):
      media = query.get("alt") == "media" or path.startswith("/download/")
      return self._get_object(match.group(1), _unquote(match.group(2)), query, media=media)
    if m in ("GET", "HEAD") and (match := _LIST.match(path)):
      return self._list(match.group(1), query)
    if m == "GET" and (match := _BUCKET.match(path)):
      return self._json(200, {"kind": "storage#bucket", "name": match.group(1),
                              "id": match.group(1), "location": "US-CENTRAL2",
                              "storageClass": "STANDARD", "metageneration": "1"})
    if m in ("POST", "PUT") and (match := _UPLOAD.match(path)):
      return self._upload(match.group(1), query, body)
    if m == "POST" and (match := _COPY.match(path)):
      return self._copy(*match.groups(), query)
    if m == "POST" and (match := _COMPOSE.match(path)):
      return self._compose(match.group(1), _unquote(match.group(2)), query, body)
    if m == "DELETE" and (match := _OBJECT.match(path)):
      return self._delete(match.group(1), _unquote(match.group(2)), query)
    if m in ("GET", "HEAD") and host in ("storage.googleapis.com", ""):
      parts = path.lstrip("/").split("/", 1)  # the XML-style media URL: /BUCKET/OBJECT
      if len(parts) == 2 and parts[1]:
        return self._get_object(parts[0], _unquote(parts[1]), query, media=True)
    return self._error(404, f"stand-in: no route for {m} {path}")

  def _control(self, path: str, body: bytes):
    s = self.standin
    if path == "/_standin/stats":
      return self._json(200, s.stats.snapshot())
    if path == "/_standin/config":
      s.configure(**json.loads(body or b"{}"))
      return self._json(200, {})
    if path == "/_standin/reset":
      s.reset_stats()
      return self._json(200, {})
    return self._error(404, path)

  # ----------------------------------------------------------------- objects
  def _get_object(self, bucket: str, name: str, query: dict, *, media: bool):
    s = self.standin
    obj = s.objects.stat(bucket, name)
    if obj is None:
      return self._error(404, f"No such object: {bucket}/{name}")
    if not _preconditions_hold(obj, query):
      return self._error(412, "Precondition Failed")
    if "ifGenerationNotMatch" in query and str(obj.generation) == query["ifGenerationNotMatch"]:
      return self._send(304, b"")
    if not media:
      return self._json(200, obj.resource())
    headers = {"Content-Type": "application/octet-stream",
               "x-goog-generation": str(obj.generation), "x-goog-metageneration": "1",
               "x-goog-stored-content-length": str(obj.size),
               "x-goog-stored-content-encoding": "identity"}
    start, end, status = 0, obj.size - 1, 200
    wanted = self.headers.get("Range")
    if wanted:
      start, end = _parse_range(wanted, obj.size)
      if start is None:
        headers["Content-Range"] = f"bytes */{obj.size}"
        return self._send(416, b"", headers)
      status = 206
      headers["Content-Range"] = f"bytes {start}-{end}/{obj.size}"
    fault = s.fault_for(f"{self.command} {self.path}", body=True)
    self.send_response(status)
    for key, value in headers.items():
      self.send_header(key, value)
    self.send_header("Content-Length", str(end + 1 - start))
    self.end_headers()
    if fault is not None:
      self._count("faults")
    try:
      sent = (self._write(s.objects.chunks(obj, start, end + 1, CHUNK), fault)
              if self.command != "HEAD" else 0)
    except _Abort:
      self._fault = "reset"
      self._log(status, fault.after_bytes)
      raise
    self._log(status, sent)

  def _list(self, bucket: str, query: dict):
    s = self.standin
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    start = query.get("pageToken") or query.get("startOffset") or ""
    limit = int(query.get("maxResults") or 1000)
    items, prefixes, token = [], set(), None
    for name in s.objects.names(bucket, prefix):
      if start and name < start:
        continue
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
        continue
      if len(items) == limit:
        token = name
        break
      obj = s.objects.stat(bucket, name)
      if obj is not None:  # not deleted meanwhile
        items.append(obj.resource())
    payload = {"kind": "storage#objects"}
    if items:
      payload["items"] = items
    if prefixes:
      payload["prefixes"] = sorted(prefixes)
    if token:
      payload["nextPageToken"] = token
    return self._json(200, payload)

  def _store(self, bucket: str, name: str, data: bytes, query: dict, *, rewrite=False):
    """Creates a generation of ``bucket/name`` under the request's preconditions and the
    per-object write rate; answers the new object's resource (or, for a rewrite, the
    rewrite response around it)."""
    s = self.standin
    with s.lock:
      if not _preconditions_hold(s.objects.stat(bucket, name), query):
        return self._error(412, "Precondition Failed")
      now = time.time()
      last = s.last_write.get((bucket, name))
      if s.write_interval_s and last is not None and now - last < s.write_interval_s:
        self._count("rate_limited")
        return self._error(429, "The object exceeded the rate limit for object mutation "
                                "operations (create, update, and delete).")
      s.last_write[(bucket, name)] = now
      obj = s.objects.write(bucket, name, data)
    self._object = name
    if rewrite:  # done in one call (a real bucket may take several, with a rewriteToken)
      return self._json(200, {"kind": "storage#rewriteResponse", "done": True,
                              "totalBytesRewritten": str(obj.size),
                              "objectSize": str(obj.size), "resource": obj.resource()})
    return self._json(200, obj.resource())

  def _delete(self, bucket: str, name: str, query: dict):
    s = self.standin
    with s.lock:
      obj = s.objects.stat(bucket, name)
      if obj is None:
        return self._error(404, f"No such object: {bucket}/{name}")
      if not _preconditions_hold(obj, query):
        return self._error(412, "Precondition Failed")
      s.objects.delete(bucket, name)
    return self._send(204, b"")

  def _upload(self, bucket: str, query: dict, body: bytes):
    s, kind = self.standin, query.get("uploadType", "media")
    if self.command == "PUT" or "upload_id" in query:
      return self._resumable_chunk(query.get("upload_id", ""), body)
    if kind == "media":
      return self._store(bucket, query["name"], body, query)
    if kind == "multipart":
      meta, data = _multipart(self.headers.get("Content-Type", ""), body)
      return self._store(bucket, meta.get("name") or query.get("name"), data, query)
    if kind == "resumable":
      meta = json.loads(body) if body.strip() else {}
      upload_id = uuid.uuid4().hex
      with s.lock:
        s.uploads[upload_id] = {"bucket": bucket, "name": meta.get("name") or query["name"],
                                "query": query, "data": bytearray()}
      host = self.headers.get("Host", f"127.0.0.1:{s.port}")
      scheme = "https" if self.tunnelled else "http"
      location = (f"{scheme}://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
                  f"&upload_id={upload_id}")
      return self._send(200, b"", {"Location": location, "X-GUploader-UploadID": upload_id})
    return self._error(400, f"stand-in: uploadType {kind!r}")

  def _resumable_chunk(self, upload_id: str, body: bytes):
    s = self.standin
    upload = s.uploads.get(upload_id)
    if upload is None:
      return self._error(404, "No such upload")
    # Content-Range: "bytes a-b/total", "bytes a-b/*", or "bytes */total" (finalize/query)
    m = re.match(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)", self.headers.get("Content-Range", ""))
    if m and m.group(2) is not None:
      del upload["data"][int(m.group(2)):]
    upload["data"] += body
    total = m.group(4) if m else str(len(upload["data"]))
    if total != "*" and len(upload["data"]) >= int(total):
      self._store(upload["bucket"], upload["name"], bytes(upload["data"]), upload["query"])
      if self._object is not None:  # stored; after a 412 or 429 the session stays, as on GCS
        with s.lock:
          s.uploads.pop(upload_id, None)
      return
    headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
    return self._send(308, b"", headers)

  def _copy(self, src_bucket, src_name, verb, dst_bucket, dst_name, query):
    s = self.standin
    source = s.objects.stat(src_bucket, _unquote(src_name))
    if source is None:
      return self._error(404, f"No such object: {src_bucket}/{_unquote(src_name)}")
    return self._store(dst_bucket, _unquote(dst_name), s.objects.read(source), query,
                       rewrite=verb == "rewriteTo")

  def _compose(self, bucket: str, name: str, query: dict, body: bytes):
    s = self.standin
    parts = []
    for source in json.loads(body or b"{}").get("sourceObjects", []):
      obj = s.objects.stat(bucket, source["name"])
      if obj is None:
        return self._error(404, f"No such object: {bucket}/{source['name']}")
      parts.append(s.objects.read(obj))
    return self._store(bucket, name, b"".join(parts), query)


# --------------------------------------------------------------------- helpers
def _unquote(name: str) -> str:
  return urllib.parse.unquote(name)


def _preconditions_hold(obj, query: dict) -> bool:
  generation = "0" if obj is None else str(obj.generation)
  if "ifGenerationMatch" in query and query["ifGenerationMatch"] != generation:
    return False
  if "ifGenerationNotMatch" in query and obj is None:
    return False
  if "ifMetagenerationMatch" in query and (obj is None or query["ifMetagenerationMatch"] != "1"):
    return False
  return True


def _parse_range(header: str, size: int):
  """The inclusive (start, end) of a ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` range;
  (None, None) when it cannot be satisfied."""
  m = re.match(r"bytes=(\d*)-(\d*)$", header.strip())
  if not m or (not m.group(1) and not m.group(2)) or not size:
    return None, None
  if not m.group(1):  # the last n bytes
    n = int(m.group(2))
    return (max(0, size - n), size - 1) if n else (None, None)
  start = int(m.group(1))
  end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
  return (start, end) if start <= end else (None, None)


def _multipart(content_type: str, body: bytes):
  """(metadata dict, media bytes) of a multipart/related upload body."""
  boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
  parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
  meta, data = {}, b""
  for i, part in enumerate(parts):
    _, _, payload = part.partition(b"\r\n\r\n")
    payload = payload[:-2] if payload.endswith(b"\r\n") else payload
    if i == 0:
      meta = json.loads(payload or b"{}")
    else:
      data = payload
  return meta, data


def _route_name(method: str, path: str) -> str:
  path = path.split("?", 1)[0]
  if path.startswith("/_standin/"):
    return "control"
  if path.startswith("/upload/"):
    return "upload"
  if "/rewriteTo/" in path or "/copyTo/" in path:
    return "rewrite"
  if path.endswith("/compose"):
    return "compose"
  if method == "DELETE":
    return "delete"
  if _LIST.match(path):
    return "list"
  if _BUCKET.match(path):
    return "bucket"
  return "object"


def client_of(user_agent: str, tunnelled: bool) -> str:
  """Which of the pod path's clients sent a request, from its User-Agent (tunnelled: it
  came through the CONNECT proxy, which only TensorFlow's filesystem uses)."""
  ua = user_agent.lower()
  if tunnelled:
    return "tensorflow"
  for client, marks in (("array_record", ("gl-cpp", "gcloud-cpp")),
                        ("tensorstore", ("tensorstore",)),
                        ("google-cloud-storage", ("gcloud-python", "gl-python")),
                        ("control", ("deit-jax-standin",))):
    if any(mark in ua for mark in marks):
      return client
  return "other:" + (user_agent.split("/")[0] or "none")
