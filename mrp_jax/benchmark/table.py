"""The benchmark's printed table (benchmark.json holds every figure)."""

from __future__ import annotations

from typing import Any, Mapping


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
  return "-" if value is None else f"{value * scale:.{digits}f}"


def plan_text(row: Mapping[str, Any]) -> str:
  text = f"{_fmt(row['residual_bytes'], 1e-9, 2)} GB kept for backward"
  if "error" in row:
    return f"{text}; compile failed: {row['error']}"
  if "planned_bytes" not in row:
    return text + " (not compiled)"
  return (f"{text}, {_fmt(row['planned_bytes'], 1e-9, 2)} GB planned by XLA "
          f"({_fmt(row['temp_bytes'], 1e-9, 2)} GB temporaries), compile "
          f"{_fmt(row['compile_s'], 1, 1)} s")


def format_table(result: Mapping[str, Any]) -> str:
  """One row per model, framework and part."""
  env = result["environment"]
  lines = [f"benchmark {env['date']} on {env['device_kind']} x{env['device_count']} "
           f"(jax {env['jax']}); peak {result['peak']['tflops']:.3g} TFLOP/s "
           f"({result['peak']['source']})",
           f"{'model':<9} {'fw':<5} {'part':<8} {'median ms':>10} {'p10':>8} {'p90':>8} "
           f"{'ex/s':>9} {'GFLOP/ex':>9} {'XLA/an.':>7} {'MFU %':>6} {'compile s':>9} "
           f"{'plan GB':>8} {'peak GB':>8}"]
  for name, entry in result["models"].items():
    rows = [("jax", part, r) for part, r in entry["jax"].items()]
    rows += [("torch", part, entry["torch"][part]) for part in ("eval", "train")
             if part in entry.get("torch", {})]
    for framework, part, r in rows:
      flop = {"eval": "forward", "train": "train"}.get(part)
      planned = (r.get("memory") or {}).get("planned_bytes")
      lines.append(
          f"{name:<9} {framework:<5} {part:<8} "
          f"{_fmt(r['median_s'], 1e3, 2):>10} {_fmt(r['p10_s'], 1e3, 2):>8} "
          f"{_fmt(r['p90_s'], 1e3, 2):>8} {_fmt(r['examples_per_s'], 1, 2):>9} "
          f"{_fmt(entry['flops'][flop] if flop else None, 1e-9, 2):>9} "
          f"{_fmt(r.get('xla_over_analytic_valid'), 1, 3):>7} {_fmt(r.get('mfu'), 100, 1):>6} "
          f"{_fmt(r.get('compile_s'), 1, 1):>9} {_fmt(planned, 1e-9, 2):>8} "
          f"{_fmt(r.get('device_peak_bytes'), 1e-9, 2):>8}")
    fed = entry["jax"].get("pipeline", {})
    if "fed_over_device" in fed:
      lines.append(f"{'':<9} train step fed by the pipeline / on a batch already on the devices "
                   f"(taken in turn): {fed['fed_over_device']:.3f} (medians "
                   f"{fed['median_s'] * 1e3:.2f} / {fed['device_batch']['median_s'] * 1e3:.2f} ms)")
    for part, r in entry.get("hlo", {}).items():
      if part in ("batch_size", "devices", "flops"):
        continue
      c, devices = r["census"], entry["hlo"]["devices"]
      lines.append(
          f"{name:<9} hlo   {part:<8} batch {entry['hlo']['batch_size']}"
          + (f" over {devices} devices (figures per device)" if devices > 1 else "") + ": "
          f"{c['kernels']} kernels, {c['gflop']:.0f} GFLOP, {c['gb']:.1f} GB moved, roofline "
          f"floor {c['floor_ms']:.1f} ms (convolutions {_fmt(c['conv_share_of_floor'], 100)}%), "
          f"MFU ceiling {_fmt(r['mfu_ceiling'], 100)}%, plan {_fmt(r['planned_bytes'], 1e-9, 2)}"
          f" GB, compile {r['compile_s']:.1f} s; " + ", ".join(
              f"{k} x{v}" for k, v in c["conv_layouts"].items()))
    for r in entry.get("plan", []):
      lines.append(f"{name:<9} plan  remat={r['remat']:<5} "
                   f"batch {r['batch_size']:>4}: " + plan_text(r))
    if "jax_over_torch" in entry:
      ratios = ", ".join(f"{k} {v:.2f}" for k, v in entry["jax_over_torch"].items())
      errors = ", ".join(f"{k} {v:.1e}" for k, v in
                         entry["torch"].get("eval_relative_error", {}).items())
      lines.append(f"{'':<9} JAX/PyTorch examples/s: {ratios}; eval outputs rel. error: {errors}")
  lines += [f"note: {n}" for n in result["notes"]]
  return "\n".join(lines)
