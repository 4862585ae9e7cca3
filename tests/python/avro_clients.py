#!/usr/bin/env python3
"""Confluent-style Avro producer, consumer and schema registration, for mtdgate's Rust tests.

Uses confluent-kafka (librdkafka) exactly as a real third-party producer or consumer would:
the Producer with its default partitioner (librdkafka's consistent_random, i.e. CRC32 of the
key; not Java's murmur2), SchemaRegistryClient({'url': ...}), AvroSerializer with its default
configuration (auto.register.schemas: the schema is registered under the subject TOPIC-value
on first use; the schema id goes in the 5-byte Confluent prefix), StringSerializer keys.

  produce  --bootstrap B --registry URL --topic T --schema FILE.avsc [--timeout S]
  produce  --bootstrap B --topic T --json [--timeout S]     (values as JSON text)
      stdin: JSON lines {"key": "...", "value": {...}}; "value": null is a tombstone, "key"
      may be null or absent. Values are as fastavro takes them: timestamp-millis as epoch-millis
      ints, enums as symbol strings, optional (["null", X]) fields as plain values or null.
      stdout, after the flush, one line per input line, in input order:
        {"key": K, "partition": P, "offset": O, "schema_id": ID}   (schema_id null: tombstone)
      exit 0 when every record was delivered; 1 on a delivery error (stderr says which).
  consume  --bootstrap B --registry URL --topic T --count N [--timeout S]
      reads every partition from the beginning, isolation.level=read_committed, values
      deserialised by AvroDeserializer with the writer schema the registry has for the id.
      stdout, one line per record as it arrives:
        {"key": K, "partition": P, "offset": O, "schema_id": ID, "value": {...}}
      timestamps (timestamp-millis/micros) converted back to epoch millis, dates to days.
      exit 0 after N records; 2 on timeout (default 30 s; stderr: how many it got); 3 when a
      value cannot be deserialised (stderr: partition, offset and the error).
  register --registry URL --subject S --schema FILE [--normalize]
      registers FILE's content (Avro) under S with SchemaRegistryClient.register_schema and
      prints the id.
"""

import argparse
import datetime
import decimal
import json
import struct
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringDeserializer,
    StringSerializer,
)

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def die(msg, code=1):
    print(f"avro_clients: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def schema_id_of(data):
    """The id in a Confluent-framed value (magic 0, 4-byte big-endian id), else None."""
    if data is None or len(data) < 5 or data[0] != 0:
        return None
    return struct.unpack(">I", data[1:5])[0]


def to_json(v):
    """fastavro's decoded values back to what `produce` takes (epoch millis etc.)."""
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(v, datetime.date):
        return (v - EPOCH.date()).days
    if isinstance(v, datetime.time):
        return (v.hour * 3600 + v.minute * 60 + v.second) * 1000 + v.microsecond // 1000
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return v


def produce(args):
    if args.json:
        # The value as JSON text, as a gateway without a registry sends it.
        def value_ser(value, _ctx):
            return json.dumps(value).encode("utf-8")
    else:
        if not args.registry or not args.schema:
            die("produce: --registry and --schema are required unless --json")
        with open(args.schema, encoding="utf-8") as f:
            schema_str = f.read()
        registry = SchemaRegistryClient({"url": args.registry})
        value_ser = AvroSerializer(registry, schema_str)
    key_ser = StringSerializer("utf_8")
    producer = Producer({"bootstrap.servers": args.bootstrap})

    results = []
    errors = []

    def report(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {i + 1}: {err}")
            else:
                results[i]["partition"] = msg.partition()
                results[i]["offset"] = msg.offset()
        return cb

    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"stdin line {n}: not JSON: {e}")
        if not isinstance(rec, dict) or "value" not in rec:
            die(f'stdin line {n}: expected {{"key": ..., "value": ...}}')
        key = rec.get("key")
        value = rec["value"]
        try:
            kbytes = key_ser(key, SerializationContext(args.topic, MessageField.KEY))
            vbytes = None if value is None else value_ser(
                value, SerializationContext(args.topic, MessageField.VALUE))
        except Exception as e:  # noqa: BLE001 - report whatever the serializer raised
            die(f"stdin line {n}: cannot serialise: {type(e).__name__}: {e}")
        i = len(results)
        results.append({"key": key, "partition": None, "offset": None,
                        "schema_id": schema_id_of(vbytes)})
        while True:
            try:
                producer.produce(args.topic, key=kbytes, value=vbytes, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    left = producer.flush(args.timeout)
    if left:
        errors.append(f"{left} record(s) not delivered within {args.timeout} s")
        producer.purge()
        producer.flush(1)
    for r in results:
        print(json.dumps(r), flush=True)
    if errors:
        for e in errors:
            print(f"avro_clients: delivery failed: {e}", file=sys.stderr)
        sys.exit(1)


def consume(args):
    registry = SchemaRegistryClient({"url": args.registry})
    value_de = AvroDeserializer(registry)
    key_de = StringDeserializer("utf_8")
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"avro-clients-{uuid.uuid4()}",
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    deadline = time.monotonic() + args.timeout
    got = 0
    try:
        md = None
        while time.monotonic() < deadline:
            md = consumer.list_topics(args.topic, timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            t = md.topics.get(args.topic)
            if t is not None and t.error is None and t.partitions:
                break
            md = None
            time.sleep(0.2)
        if md is None:
            die(f"topic {args.topic} not found within {args.timeout} s; got 0 of {args.count}", 2)
        parts = sorted(md.topics[args.topic].partitions)
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in parts])
        while got < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                die(f"timeout after {args.timeout} s: got {got} of {args.count} records", 2)
            msg = consumer.poll(min(left, 1.0))
            if msg is None:
                continue
            if msg.error():
                die(f"consume error: {msg.error()}", 1)
            raw = msg.value()
            try:
                key = key_de(msg.key(), SerializationContext(args.topic, MessageField.KEY))
                value = None if raw is None else value_de(
                    raw, SerializationContext(args.topic, MessageField.VALUE))
            except Exception as e:  # noqa: BLE001
                die(f"partition {msg.partition()} offset {msg.offset()}: cannot deserialise "
                    f"(first bytes {raw[:5].hex() if raw else ''}): {type(e).__name__}: {e}", 3)
            print(json.dumps({
                "key": key,
                "partition": msg.partition(),
                "offset": msg.offset(),
                "schema_id": schema_id_of(raw),
                "value": to_json(value),
            }), flush=True)
            got += 1
    except KafkaException as e:
        die(f"kafka: {e}", 1)
    finally:
        consumer.close()


def register(args):
    with open(args.schema, encoding="utf-8") as f:
        schema_str = f.read()
    registry = SchemaRegistryClient({"url": args.registry})
    try:
        sid = registry.register_schema(args.subject, Schema(schema_str, "AVRO"),
                                       normalize_schemas=args.normalize)
    except Exception as e:  # noqa: BLE001
        die(f"register {args.subject}: {type(e).__name__}: {e}")
    print(sid, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    pp = sub.add_parser("produce", help="JSON lines on stdin -> Avro records")
    pp.add_argument("--bootstrap", required=True)
    pp.add_argument("--registry")
    pp.add_argument("--topic", required=True)
    pp.add_argument("--schema", help="writer schema, an .avsc file")
    pp.add_argument("--json", action="store_true",
                    help="values as JSON text (no registry, no schema)")
    pp.add_argument("--timeout", type=float, default=30.0, help="flush timeout, seconds")
    pp.set_defaults(func=produce)

    pc = sub.add_parser("consume", help="Avro records -> JSON lines on stdout")
    pc.add_argument("--bootstrap", required=True)
    pc.add_argument("--registry", required=True)
    pc.add_argument("--topic", required=True)
    pc.add_argument("--count", type=int, required=True)
    pc.add_argument("--timeout", type=float, default=30.0, help="seconds for all N records")
    pc.set_defaults(func=consume)

    pr = sub.add_parser("register", help="register a schema, print its id")
    pr.add_argument("--registry", required=True)
    pr.add_argument("--subject", required=True)
    pr.add_argument("--schema", required=True)
    pr.add_argument("--normalize", action="store_true")
    pr.set_defaults(func=register)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
