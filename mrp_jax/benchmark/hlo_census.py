"""What a compiled XLA program does, read from its optimised HLO text: no device, no profiler.

``census(text, peak_tflops, bandwidth_gbs)`` walks the entry computation of an optimised module
(``compiled.as_text()``) and sorts each kernel-launching instruction into a category:

* ``conv_forward`` / ``conv_backward_input`` / ``conv_backward_filter``: cuDNN convolution
  custom-calls (XLA:GPU), with their dim_labels, i.e. the layout cuDNN is given (``bf012``:
  channels first, NCDHW; ``b012f``: channels last, NDHWC); ``convolution``: XLA's own
  convolution (CPU, or fused into a loop);
* ``matmul``: cuBLAS calls and GEMM fusions; ``scatter``: scatter / select-and-scatter (a max
  pool's gradient); ``layout``: pure data movement (transpose / copy, alone or as a fusion's
  root); ``reduction``: fusions that reduce (norm statistics, loss); ``elementwise``: the rest;
  ``collective``: cross-device communication (bytes counted, no floor: the interconnect is not
  modelled).

Per instruction it counts FLOPs (convolutions: 2 per multiply-add over every tap of the forward
convolution the call computes a part of; matmuls: 2 per multiply-add of HLO dots, fused or not,
while a cuBLAS custom-call's FLOPs are not read) and bytes (its operands read once plus its
output written once; a fusion that reads only a slice of an operand is over-counted, one that
reads an operand twice is under-counted), and a roofline floor,
``max(flops / peak, bytes / bandwidth)``. The sum of the floors is what the step would take if
every kernel ran at the device's peak or its memory bandwidth, whichever binds: not a
prediction, a bound that says which kernels can hold the step back and how far.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterator

CATEGORIES = ("conv_forward", "conv_backward_input", "conv_backward_filter", "convolution",
              "matmul", "scatter", "layout", "reduction", "elementwise", "collective")
# Cross-device communication (the -done half of an asynchronous pair launches nothing).
_COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "all-reduce-start", "all-gather-start", "collective-permute-start"}
_CONV_TARGETS = {"__cudnn$convForward": "conv_forward",
                 "__cudnn$convBiasActivationForward": "conv_forward",
                 "__cudnn$convForwardGraph": "conv_forward",
                 "__cudnn$convBackwardInput": "conv_backward_input",
                 "__cudnn$convBackwardFilter": "conv_backward_filter"}
# Instructions that launch nothing (views, tuples, constants, control).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "all-reduce-done", "all-gather-done", "collective-permute-done",
         "partition-id", "replica-id", "opt-barrier", "optimization-barrier", "iota"}
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
               "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string: an array ``bf16[8,64,44]{...}`` or a tuple of them."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _ITEM_BYTES:
      total += _ITEM_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _dims(shape: str) -> list[int]:
  """Dimensions of the first array in ``shape``."""
  match = _ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(",") if d] if match else []


def _split_shape(rest: str) -> tuple[str, str]:
  """(shape, remainder) of ``rest``, which starts with a shape (a tuple shape is parenthesised)."""
  if not rest.startswith("("):
    head, _, tail = rest.partition(" ")
    return head, tail
  depth = 0
  for i, char in enumerate(rest):
    depth += char == "("
    depth -= char == ")"
    if depth == 0:
      return rest[:i + 1], rest[i + 1:].lstrip()
  return rest, ""


def _operands(call: str) -> tuple[str, list[str], str]:
  """(opcode, operand names, attributes) of ``opcode(%a, %b), attrs``."""
  opcode, _, rest = call.partition("(")
  depth, end = 1, len(rest)
  for i, char in enumerate(rest):
    depth += char == "("
    depth -= char == ")"
    if depth == 0:
      end = i
      break
  return opcode.strip(), re.findall(r"%([\w.\-]+)", rest[:end]), rest[end + 1:]


def parse(text: str) -> tuple[str | None, dict[str, list[dict[str, Any]]]]:
  """(entry computation's name, {computation: [instruction]}) of an HLO module's text; each
  instruction is a dict of name, shape, opcode, operands and attrs (the rest of the line)."""
  computations: dict[str, list[dict[str, Any]]] = {}
  entry, current = None, None
  for line in text.splitlines():
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      header = _HEADER.match(line)
      if header and not line.startswith("HloModule"):
        current = header.group(2)
        computations[current] = []
        entry = current if header.group(1) else entry
      continue
    instruction = _INSTRUCTION.match(line)
    if current is None or not instruction:
      continue
    shape, call = _split_shape(line[instruction.end():])
    opcode, operands, attrs = _operands(call)
    computations[current].append({"name": instruction.group(1), "shape": shape,
                                  "opcode": opcode, "operands": operands, "attrs": attrs})
  return entry, computations


def _label(attrs: str, key: str) -> str | None:
  """The value of ``key=value`` or ``key="quoted value"`` in an instruction's attributes."""
  match = re.search(r"\b" + key + r'=(?:"([^"]*)"|([^,\s}]+))', attrs)
  return (match.group(1) if match.group(1) is not None else match.group(2)) if match else None


def conv_flops(kind: str, shapes: list[str], result: str, dim_labels: str | None) -> float:
  """FLOPs of the forward convolution a call computes (or computes a gradient of): 2 x output
  elements x filter elements / output channels. The forward's output and filter are the
  call's result and second operand (forward), its first and second operands (backward input)
  or its second operand and result (backward filter)."""
  if kind == "conv_backward_input":
    out, kernel = shapes[0], shapes[1]
  elif kind == "conv_backward_filter":
    out, kernel = shapes[1], result
  else:
    out, kernel = result, shapes[1]
  kernel_dims = _dims(kernel)
  filter_labels = (dim_labels or "").split("_")[-1].split("->")[0]
  if "o" not in filter_labels or len(filter_labels) != len(kernel_dims):
    return 0.0
  return 2.0 * math.prod(_dims(out)) * math.prod(kernel_dims) / kernel_dims[
      filter_labels.index("o")]


def _instruction_conv_flops(kind: str, inst: dict[str, Any], shapes: dict[str, str]) -> float:
  """:func:`conv_flops` of a convolution instruction, its operands' shapes looked up."""
  return conv_flops(kind, [shapes.get(o, "") for o in inst["operands"]], inst["shape"],
                    _label(inst["attrs"], "dim_labels"))


def _dot_flops(dot: dict[str, Any], shapes: dict[str, str]) -> float:
  """2 x output elements x the contracted size of a dot."""
  lhs = _dims(shapes.get(dot["operands"][0], "")) if dot["operands"] else []
  contracting = _label(dot["attrs"], "lhs_contracting_dims") or ""
  size = math.prod(lhs[int(i)] for i in re.findall(r"\d+", contracting) if int(i) < len(lhs))
  return 2.0 * math.prod(_dims(dot["shape"])) * size


def _fusion_category(body: list[dict[str, Any]]) -> str:
  ops = {i["opcode"] for i in body}
  root = body[-1]["opcode"] if body else ""
  if "convolution" in ops:
    return "convolution"
  if "dot" in ops:
    return "matmul"
  if ops & {"scatter", "select-and-scatter"}:
    return "scatter"
  if root in ("transpose", "copy") and ops <= {"parameter", "transpose", "copy", "bitcast",
                                                "reshape"}:
    return "layout"
  if ops & {"reduce", "reduce-window"}:
    return "reduction"
  return "elementwise"


def _kernels(entry: str, computations: dict[str, list[dict[str, Any]]],
             shapes: dict[str, str]) -> Iterator[dict[str, Any]]:
  """Category, FLOPs, bytes and layout of each entry instruction that launches work."""
  for inst in computations[entry]:
    opcode, attrs = inst["opcode"], inst["attrs"]
    if opcode in _FREE:
      continue
    flops, labels = 0.0, _label(attrs, "dim_labels")
    if opcode == "custom-call":
      target = _label(attrs, "custom_call_target") or ""
      category = _CONV_TARGETS.get(target)
      if category:
        flops = _instruction_conv_flops(category, inst, shapes)
      elif "cublas" in target or "matmul" in target:
        category = "matmul"
      else:
        category = "elementwise"
    elif opcode == "fusion":
      callee = _label(attrs, "calls") or ""
      body = computations.get(callee.lstrip("%"), [])
      category = _fusion_category(body)
      for inner in body:
        if inner["opcode"] == "dot":
          flops += _dot_flops(inner, shapes)
        elif inner["opcode"] == "convolution":
          flops += _instruction_conv_flops("conv_forward", inner, shapes)
          labels = labels or _label(inner["attrs"], "dim_labels")
    elif opcode == "convolution":
      category = "convolution"
      flops = _instruction_conv_flops("conv_forward", inst, shapes)
    elif opcode == "dot":
      category, flops = "matmul", _dot_flops(inst, shapes)
    elif opcode in ("scatter", "select-and-scatter"):
      category = "scatter"
    elif opcode in _COLLECTIVES:
      category = "collective"
    elif opcode in ("transpose", "copy"):
      category = "layout"
    elif opcode in ("reduce", "reduce-window"):
      category = "reduction"
    else:
      category = "elementwise"
    operand_bytes = sum(shape_bytes(shapes.get(o, "")) for o in dict.fromkeys(inst["operands"]))
    yield {"name": inst["name"], "category": category, "flops": flops, "dim_labels": labels,
           "bytes": operand_bytes + shape_bytes(inst["shape"]),
           "op_name": _label(attrs, "op_name") or ""}


def census(text: str, peak_tflops: float, bandwidth_gbs: float, top: int = 8) -> dict[str, Any]:
  """Per category: kernels, GFLOP, GB moved and roofline floor (ms) of an optimised module;
  the cuDNN convolutions' layouts; the ``top`` kernels by floor (by bytes when a rate is 0,
  which leaves the floors 0); and the totals."""
  entry, computations = parse(text)
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text (pass compiled.as_text())")
  shapes = {i["name"]: i["shape"] for body in computations.values() for i in body}
  rows = list(_kernels(entry, computations, shapes))
  for kernel in rows:
    # No floor without both rates (a CPU has no stated bandwidth), nor for collectives (the
    # interconnect is not modelled: their bytes are reported, their time is not bounded).
    kernel["floor_ms"] = (1e3 * max(kernel["flops"] / (peak_tflops * 1e12),
                                    kernel["bytes"] / (bandwidth_gbs * 1e9))
                          if peak_tflops > 0 and bandwidth_gbs > 0
                          and kernel["category"] != "collective" else 0.0)
  by_category = {}
  for category in CATEGORIES:
    members = [r for r in rows if r["category"] == category]
    if members:
      by_category[category] = {
          "kernels": len(members), "gflop": sum(r["flops"] for r in members) / 1e9,
          "gb": sum(r["bytes"] for r in members) / 1e9,
          "floor_ms": sum(r["floor_ms"] for r in members)}
  conv_layouts = Counter(f"{r['category']} {r['dim_labels']}" for r in rows
                         if r["category"].startswith("conv") and r["dim_labels"])
  floor_ms = sum(r["floor_ms"] for r in rows)
  conv_floor = sum(v["floor_ms"] for k, v in by_category.items() if k.startswith("conv"))
  heaviest = sorted(rows, key=lambda r: (-r["floor_ms"], -r["bytes"]))[:top]
  return {"peak_tflops": peak_tflops, "bandwidth_gbs": bandwidth_gbs, "kernels": len(rows),
          "gflop": sum(r["flops"] for r in rows) / 1e9,
          "gb": sum(r["bytes"] for r in rows) / 1e9, "floor_ms": floor_ms,
          "conv_share_of_floor": conv_floor / floor_ms if floor_ms else None,
          "categories": by_category, "conv_layouts": dict(sorted(conv_layouts.items())),
          "heaviest": [{k: r[k] for k in ("category", "floor_ms", "flops", "bytes", "op_name")}
                       for r in heaviest]}


def format_census(result: dict[str, Any]) -> str:
  """A table of the census: one row per category, then the heaviest kernels."""
  lines = [f"{'category':22s} {'kernels':>7s} {'GFLOP':>9s} {'GB':>8s} {'floor ms':>9s}"]
  for category, row in result["categories"].items():
    lines.append(f"{category:22s} {row['kernels']:7d} {row['gflop']:9.1f} {row['gb']:8.2f} "
                 f"{row['floor_ms']:9.2f}")
  lines.append(f"{'total':22s} {result['kernels']:7d} {result['gflop']:9.1f} "
               f"{result['gb']:8.2f} {result['floor_ms']:9.2f}")
  lines.append("convolution layouts: " + ", ".join(
      f"{k} x{v}" for k, v in result["conv_layouts"].items()))
  for row in result["heaviest"]:
    lines.append(f"  {row['floor_ms']:7.2f} ms  {row['category']:20s} {row['op_name'][-80:]}")
  return "\n".join(lines)
