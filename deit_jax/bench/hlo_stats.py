"""Counts in an optimized HLO module's text (``compiled.as_text()``): the collectives
(kind, count, bytes) and the layout changes (copies and transposes) that run as kernels
of their own.

Only instructions outside fused computations are kernels; a fusion whose root is a copy
or transpose is a layout change too. ``copy-start``/``copy-done`` pairs are counted apart:
on TPU they are asynchronous moves between memory spaces (prefetches), not layout changes.
"""

from __future__ import annotations

import collections
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute", "collective-broadcast", "ragged-all-to-all")
LAYOUT_OPS = {"copy": "copies", "transpose": "transposes"}

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5,
          "u4": 0.5}
_PAREN = r"\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)"  # a tuple shape, layouts nest parens
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?(\S+) = (" + _PAREN + r"|\S+) ([a-z][a-z0-9-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(\S+) .*\{\s*$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def shape_bytes(shape: str) -> float:
  """Bytes of an HLO shape string (a tuple: the sum of its arrays)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _BYTES:
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      total += n * _BYTES[dtype]
  return total


def _tuple_elements(shape: str) -> list[str]:
  """Top-level elements of a tuple shape ``(a, b, ...)``."""
  inner, parts, depth, start = shape[1:-1], [], 0, 0
  for i, ch in enumerate(inner):
    depth += ch in "({[" and 1 or (-1 if ch in ")}]" else 0)
    if ch == "," and depth == 0:
      parts.append(inner[start:i])
      start = i + 1
  parts.append(inner[start:])
  return [p for p in parts if "[" in p]


def _moved_bytes(opcode: str, shape: str) -> float:
  """Bytes a collective delivers: its result (an async start's tuple also holds the
  operand and scalar flags: its last array element is the result)."""
  if opcode.endswith("-start") and shape.startswith("("):
    arrays = [e for e in _tuple_elements(shape) if shape_bytes(e) > 4]
    if opcode == "all-reduce-start" or not arrays:
      return shape_bytes(shape)
    return shape_bytes(arrays[-1])
  return shape_bytes(shape)


def analyze(hlo_text: str) -> dict:
  """{"collectives": {kind: {"count", "bytes"}}, "copies", "transposes" (with their
  result "_bytes"), "async_copies", "kernels", "custom_calls": {target: count}} of one
  optimized module."""
  computations: dict[str, list[tuple[str, str, str, bool]]] = {}
  current = None
  for line in hlo_text.splitlines():
    if current is None or not line.startswith((" ", "\t")):
      match = _COMPUTATION.match(line)
      if match and "=" not in line.split("{")[0].split("(")[0]:
        current = match.group(1)
        computations[current] = []
        continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      computations[current].append((match.group(4), match.group(3), line, bool(match.group(1))))

  fused = {callee for body in computations.values() for opcode, _, line, _ in body
           if opcode == "fusion" for callee in _CALLS.findall(line)}
  roots = {name: next((op for op, _, _, root in body if root), None)
           for name, body in computations.items()}
  collectives = collections.defaultdict(lambda: {"count": 0, "bytes": 0.0})
  counts, custom_calls = collections.Counter(), collections.Counter()
  for name, body in computations.items():
    if name in fused:
      continue
    for opcode, shape, line, _ in body:
      counts["kernels"] += opcode not in ("parameter", "constant", "tuple",
                                          "get-tuple-element", "bitcast")
      kind = opcode.removesuffix("-start")
      if kind in COLLECTIVES and not opcode.endswith("-done"):
        collectives[kind]["count"] += 1
        collectives[kind]["bytes"] += _moved_bytes(opcode, shape)
      elif opcode == "copy-start":
        counts["async_copies"] += 1
      elif opcode == "custom-call":
        custom_calls.update(_TARGET.findall(line)[:1])
      elif opcode in LAYOUT_OPS:
        counts[LAYOUT_OPS[opcode]] += 1
        counts[LAYOUT_OPS[opcode] + "_bytes"] += shape_bytes(shape)
      elif opcode == "fusion":
        root = next((roots.get(c) for c in _CALLS.findall(line)), None)
        if root in LAYOUT_OPS:
          counts[LAYOUT_OPS[root]] += 1
          counts[LAYOUT_OPS[root] + "_bytes"] += shape_bytes(shape)
  return {"collectives": {k: dict(v) for k, v in sorted(collectives.items())},
          **{k: counts[k] for k in ("copies", "copies_bytes", "transposes",
                                    "transposes_bytes")},
          "async_copies": counts["async_copies"], "kernels": counts["kernels"],
          "custom_calls": dict(sorted(custom_calls.items()))}
