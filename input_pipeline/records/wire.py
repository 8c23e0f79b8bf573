"""Protobuf wire-level writing and reading of the record's ``tf.train.Example``.

Writing: :func:`aligned_example` lays a serialised Example's image entries out so that each
payload starts at a 64-byte offset of the shard once framed by TFRecord (the record format's
alignment, ``input_pipeline.records``). Reading: :func:`split_payloads` cuts the image values
out of a serialised Example as views, so protobuf parses only the few hundred bytes that remain.

Parsing a 44-66 MB Example with protobuf copies every volume twice (into the message, then
into a Python bytes object per access): ~60 ms per full-geometry record, more than the rest
of the input pipeline (docs/data.md, "The records"). Cut out as views, the volumes cost
nothing, and every check of the record format still runs on protobuf's reading of the record.
"""

from __future__ import annotations

# Image payloads start at this alignment in a shard's file.
ALIGNMENT = 64
# A TFRecord frames each record's data with a 12-byte header and a 4-byte footer.
FRAME_HEADER, FRAME_FOOTER = 12, 4
TAG_1_LEN = 0x0A  # field 1, wire type 2 (length-delimited)
TAG_2_LEN = 0x12  # field 2, wire type 2


class Irregular(Exception):
  """The Example is not laid out as ``encode`` writes it: protobuf parses all of it."""


def _length_delimited(tag: int, value: bytes) -> bytes:
  return bytes([tag]) + _varint_bytes(len(value)) + value


def _map_entry_head(key: str, payload_size: int) -> bytes:
  """A feature-map entry ``key -> Feature{bytes_list{value: [payload]}}`` up to (without) the
  payload's first byte."""
  key_field = _length_delimited(TAG_1_LEN, key.encode())
  bytes_list_size = 1 + len(_varint_bytes(payload_size)) + payload_size
  feature_size = 1 + len(_varint_bytes(bytes_list_size)) + bytes_list_size
  entry_size = len(key_field) + 1 + len(_varint_bytes(feature_size)) + feature_size
  return (bytes([TAG_1_LEN]) + _varint_bytes(entry_size) + key_field
          + bytes([TAG_2_LEN]) + _varint_bytes(feature_size)
          + bytes([TAG_1_LEN]) + _varint_bytes(bytes_list_size)
          + bytes([TAG_1_LEN]) + _varint_bytes(payload_size))


def _padding_entry(key: str, size_mod: int) -> bytes:
  """A feature-map entry ``key -> bytes_list [zeros]`` whose size is ``size_mod`` modulo
  :data:`ALIGNMENT` (every length fits one varint byte: 1 + 1 + the key field, the 0x12 tag
  and length, the lists' tags and lengths: 10 + len(key) bytes plus the zeros)."""
  zeros = (size_mod - 10 - len(key)) % ALIGNMENT
  entry = _map_entry_head(key, zeros) + bytes(zeros)
  assert len(entry) % ALIGNMENT == size_mod % ALIGNMENT, (key, len(entry), size_mod)
  return entry


def aligned_example(features_body: bytes, payloads: list[tuple[str, bytes]]) -> bytes:
  """Example{features{features_body, then the payload entries}} with every payload at
  data-relative offset 64k - 12 and the framed record (12 + data + 4) a multiple of 64."""
  header_size = 1 + len(_varint_bytes(len(features_body)))
  while True:  # the outer length's varint size depends on the padding: converges in <= 2 rounds
    parts = [features_body]
    position = header_size + len(features_body)  # offset in the record's data
    for key, payload in payloads:
      head = _map_entry_head(key, len(payload))
      pad = _padding_entry(f"align/{key}", -(position + len(head) + FRAME_HEADER))
      parts += [pad, head, payload]
      position += len(pad) + len(head) + len(payload)
    parts.append(_padding_entry("align/end", -(position + FRAME_HEADER + FRAME_FOOTER)))
    body_size = sum(len(p) for p in parts)
    if 1 + len(_varint_bytes(body_size)) == header_size:
      return bytes([TAG_1_LEN]) + _varint_bytes(body_size) + b"".join(parts)
    header_size = 1 + len(_varint_bytes(body_size))


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
  value = shift = 0
  while pos < end and shift < 64:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7
  raise Irregular


def _field(data: memoryview, pos: int, end: int) -> tuple[int, int, int]:
  """(tag, start, stop) of the length-delimited field at ``pos``; raises Irregular for any
  other wire type or a length past ``end``."""
  tag, pos = _varint(data, pos, end)
  if tag & 7 != 2:
    raise Irregular
  length, pos = _varint(data, pos, end)
  if pos + length > end:
    raise Irregular
  return tag, pos, pos + length


def only_field(data: memoryview, start: int, stop: int, tag: int) -> tuple[int, int]:
  """The extent of the single field ``tag`` that fills data[start:stop] exactly."""
  found, begin, end = _field(data, start, stop)
  if found != tag or end != stop:
    raise Irregular
  return begin, end


def _varint_bytes(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def split_payloads(data: bytes | memoryview, payload_keys: frozenset[str]
                   ) -> tuple[bytes, dict[str, memoryview]]:
  """(the Example without its image entries, {image key: view of its bytes value}).

  Only a feature-map entry that is exactly ``key, Feature{bytes_list{value: [one bytes]}}``
  for a key in ``payload_keys`` is cut out; anything else stays for protobuf. Raises Irregular
  when the Example is laid out otherwise (several ``features`` fields, a repeated image key, a
  wire type ``encode`` never writes)."""
  data = memoryview(data).cast("B")
  end = len(data)
  begin, stop = only_field(data, 0, end, TAG_1_LEN)  # Example.features
  kept: list[memoryview] = []
  payloads: dict[str, memoryview] = {}
  seen: set[str] = set()
  pos = begin
  while pos < stop:
    tag, entry_begin, entry_end = _field(data, pos, stop)  # Features.feature (map entry)
    if tag != TAG_1_LEN:
      raise Irregular
    key, value = None, None
    inner = entry_begin
    while inner < entry_end:
      field, field_begin, field_end = _field(data, inner, entry_end)
      if field == TAG_1_LEN:
        key = bytes(data[field_begin:field_end])
      elif field == TAG_2_LEN:
        value = (field_begin, field_end)
      else:
        raise Irregular
      inner = field_end
    name = key.decode("utf-8", "replace") if key is not None else None
    payload = None
    if name in payload_keys:
      if name in seen:
        raise Irregular  # protobuf's map keeps the last one: let it decide
      seen.add(name)
      if value is not None:
        try:  # Feature{bytes_list (1)} -> BytesList{value (1)}: one bytes value
          lists = only_field(data, *value, TAG_1_LEN)
          payload = data[slice(*only_field(data, *lists, TAG_1_LEN))]
        except Irregular:
          payload = None
    if payload is None:
      kept.append(data[pos:entry_end])
    else:
      payloads[name] = payload
    pos = entry_end
  body = b"".join(kept)
  return bytes([TAG_1_LEN]) + _varint_bytes(len(body)) + body, payloads
