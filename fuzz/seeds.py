#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/.

The Avro encodings are made here from the `.avsc` files, independently of the Rust codec: a
small Avro binary encoder, the Parsing Canonical Form and CRC-64-AVRO fingerprints of the
specification, and the Confluent ids of schemas/ids.toml. `tests/malformed_inputs.rs`
(`fuzz_seeds_decode_as_their_record`) checks that every decode seed decodes, so the seeds and
the decoders stay in step; rerun this script after a schema change:

    python3 fuzz/seeds.py

Deterministic: the same schemas give the same files.
"""

import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(ROOT, "schemas")
OUT = os.path.join(ROOT, "fuzz", "seeds")
T0 = 1_700_000_000_000  # the engine target's clock starts here

# ------------------------------------------------------------------ Avro schemas


def load(name):
    with open(os.path.join(SCHEMAS, name + ".avsc")) as f:
        return json.load(f)


def confluent_ids():
    """The current ids: the `[ids]` table only (later tables hold older versions' ids)."""
    ids = {}
    section = None
    with open(os.path.join(SCHEMAS, "ids.toml")) as f:
        for line in f:
            h = re.match(r"^\s*\[(.*)\]\s*$", line)
            if h:
                section = h.group(1).strip()
                continue
            m = re.match(r"^\s*(\w+)\s*=\s*(\d+)\s*$", line)
            if m and section == "ids":
                ids[m.group(1)] = int(m.group(2))
    return ids


PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def fullname(name, namespace):
    if "." in name or not namespace:
        return name
    return namespace + "." + name


def canonical(schema):
    """Parsing Canonical Form (Avro specification), as Java computes it."""
    seen = set()

    def pcf(s, ns):
        if isinstance(s, str):
            if s in PRIMITIVES:
                return json.dumps(s)
            return json.dumps(fullname(s, ns))
        if isinstance(s, list):
            return "[" + ",".join(pcf(b, ns) for b in s) + "]"
        t = s["type"]
        if t in PRIMITIVES:
            return json.dumps(t)  # logicalType and the rest are stripped
        if t in ("record", "enum", "fixed"):
            name = fullname(s["name"], s.get("namespace", ns))
            if name in seen:
                return json.dumps(name)
            seen.add(name)
            inner_ns = name.rsplit(".", 1)[0] if "." in name else ""
            parts = ['"name":' + json.dumps(name), '"type":' + json.dumps(t)]
            if t == "record":
                fields = []
                for f in s["fields"]:
                    fields.append(
                        '{"name":' + json.dumps(f["name"]) + ',"type":' + pcf(f["type"], inner_ns) + "}"
                    )
                parts.append('"fields":[' + ",".join(fields) + "]")
            elif t == "enum":
                parts.append('"symbols":[' + ",".join(json.dumps(x) for x in s["symbols"]) + "]")
            else:
                parts.append('"size":' + str(int(s["size"])))
            return "{" + ",".join(parts) + "}"
        if t == "array":
            return '{"type":"array","items":' + pcf(s["items"], ns) + "}"
        if t == "map":
            return '{"type":"map","values":' + pcf(s["values"], ns) + "}"
        return pcf(t, ns)

    return pcf(schema, "")


CRC_EMPTY = 0xC15D213AA4D7A795
CRC_TABLE = []
for i in range(256):
    fp = i
    for _ in range(8):
        fp = (fp >> 1) ^ (CRC_EMPTY & -(fp & 1))
    CRC_TABLE.append(fp & 0xFFFFFFFFFFFFFFFF)


def crc64_avro(data):
    fp = CRC_EMPTY
    for b in data:
        fp = (fp >> 8) ^ CRC_TABLE[(fp ^ b) & 0xFF]
    return fp


def fingerprint(schema):
    return crc64_avro(canonical(schema).encode())


# ------------------------------------------------------------------ Avro binary


def zigzag(n):
    z = (n << 1) ^ (n >> 63)
    z &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class Encoder:
    def __init__(self):
        self.named = {}

    def enc(self, s, v, ns=""):
        if isinstance(s, list):
            for i, b in enumerate(s):
                if v is None and b == "null":
                    return zigzag(i)
            for i, b in enumerate(s):
                if b != "null" and v is not None:
                    return zigzag(i) + self.enc(b, v, ns)
            raise ValueError("no union branch for %r" % (v,))
        if isinstance(s, str):
            if s in PRIMITIVES:
                return self.prim(s, v)
            return self.enc(self.named[fullname(s, ns)], v, ns)
        t = s["type"]
        if t in PRIMITIVES:
            return self.prim(t, v)
        if t in ("record", "enum", "fixed"):
            name = fullname(s["name"], s.get("namespace", ns))
            self.named.setdefault(name, s)
            inner = name.rsplit(".", 1)[0]
            if t == "enum":
                return zigzag(s["symbols"].index(v))
            if t == "fixed":
                return bytes(v)
            out = b""
            for f in s["fields"]:
                fv = v[f["name"]] if f["name"] in v else f.get("default")
                out += self.enc(f["type"], fv, inner)
            return out
        if t == "array":
            if not v:
                return zigzag(0)
            return zigzag(len(v)) + b"".join(self.enc(s["items"], x, ns) for x in v) + zigzag(0)
        if t == "map":
            if not v:
                return zigzag(0)
            out = zigzag(len(v))
            for k in sorted(v):
                out += self.prim("string", k) + self.enc(s["values"], v[k], ns)
            return out + zigzag(0)
        raise ValueError("type %r" % (t,))

    def prim(self, t, v):
        if t == "null":
            return b""
        if t == "boolean":
            return b"\x01" if v else b"\x00"
        if t in ("int", "long"):
            return zigzag(int(v))
        if t == "string":
            b = v.encode()
            return zigzag(len(b)) + b
        if t == "bytes":
            return zigzag(len(v)) + bytes(v)
        if t == "float":
            return struct.pack("<f", v)
        if t == "double":
            return struct.pack("<d", v)
        raise ValueError(t)


def datum(schema, value):
    return Encoder().enc(schema, value)


def single_object(schema, value):
    return b"\xc3\x01" + struct.pack("<Q", fingerprint(schema)) + datum(schema, value)


def confluent(schema_id, schema, value):
    return b"\x00" + struct.pack(">I", schema_id) + datum(schema, value)


def js(value):
    return json.dumps(value, separators=(",", ":")).encode()


# ------------------------------------------------------------------ sample records

REPORT = {
    "event_id": "e-1", "tenant_id": "acme", "partner_id": "lookout", "device_id": "d1",
    "user_id": "alice", "platform": "IOS", "management": "MDM", "ownership": "CORPORATE",
    "os_version": "17.4.1", "health_state": "HIGH",
    "threats": [{"category": "app", "name": "evil.ipa", "severity": "CRITICAL"},
                {"category": "network", "name": "mitm", "severity": "LOW"}],
    "observed_at": T0 - 1000,
}
REPORT_MIN = {
    "event_id": "e-2", "tenant_id": "acme", "partner_id": "microsoft-defender-for-endpoint",
    "device_id": "m1", "platform": "ANDROID", "management": "MAM", "health_state": "SECURED",
    "threats": [], "observed_at": T0 - 500,
}
HEARTBEAT = {
    "tenant_id": "acme", "partner_id": "lookout", "sent_at": T0 - 2000, "error_code": None,
    "min_os_versions": {"IOS": "16.0", "ANDROID": "12"},
}
HEARTBEAT_ERR = {"tenant_id": "acme", "partner_id": "zimperium", "sent_at": T0, "error_code": 7}
CONNECTOR = {
    "tenant_id": "acme", "partner_id": "lookout", "provisioned": True, "setup_complete": True,
    "ios_enabled": True, "android_enabled": True, "ios_mam_enabled": True,
    "ios_blocked_on_missing_data": True, "ios_app_sync": True, "unsupported_os_blocked": True,
    "heartbeat_timeout_seconds": 3600, "unresponsive_threshold_days": 2, "updated_at": T0 - 5000,
}
CONNECTOR_MIN = {"tenant_id": "acme", "partner_id": "zimperium", "updated_at": T0 - 5000}
# Contract 1.1: a failing device is IN_GRACE_PERIOD for 72 hours before NONCOMPLIANT.
POLICY_CP = {
    "tenant_id": "acme", "policy_id": "cp-ios", "kind": "COMPLIANCE", "platform": "IOS",
    "max_level": "MEDIUM", "updated_at": T0 - 4000, "grace_period_hours": 72,
}
POLICY_AP = {
    "tenant_id": "acme", "policy_id": "ap-ios", "kind": "APP_PROTECTION", "platform": "IOS",
    "max_level": "LOW", "action": "BLOCK", "partner_priority": "THIRD_PARTY_FIRST",
    "updated_at": T0 - 4000,
}
POLICY_WIPE = dict(POLICY_AP, policy_id="ap-wipe", platform="ANDROID", action="WIPE",
                   partner_priority=None, max_level="MEDIUM", block_on_missing_data=True)
# Contract 1.1: assigned to groups, Defender judged apart.
POLICY_GROUPS = dict(POLICY_CP, policy_id="cp-sales", include_groups=["sales"],
                     exclude_groups=["contractors"], defender_max_level="LOW",
                     grace_period_hours=24)
MEMBERSHIP = {"tenant_id": "acme", "user_id": "alice", "groups": ["sales", "staff"],
              "updated_at": T0 - 3500}
MEMBERSHIP_MIN = {"tenant_id": "acme", "user_id": "bob", "updated_at": T0 - 3500}
SETTINGS = {"tenant_id": "acme", "no_policy_state": "NONCOMPLIANT", "report_validity_days": 30,
            "updated_at": T0 - 3500}
SETTINGS_MIN = {"tenant_id": "acme", "updated_at": T0 - 3500}
# Reports older than a day are no usable data (REPORT_EXPIRED).
SETTINGS_EXPIRY = {"tenant_id": "acme", "no_policy_state": "NOT_EVALUATED",
                   "report_validity_days": 1, "updated_at": T0 - 3400}
ENROLLMENT = {
    "tenant_id": "acme", "device_id": "d1", "user_id": "alice", "platform": "IOS",
    "management": "MDM", "ownership": "PERSONAL", "os_version": "17.4", "enrolled_at": T0 - 3000,
}
INVENTORY = {
    "tenant_id": "acme", "device_id": "d1", "ownership": "PERSONAL", "collected_at": T0 - 100,
    "apps": [
        {"app_id": "com.example.mail", "version": "1.2.3", "short_version": "1.2", "name": "Mail",
         "bundle_size": 1048576, "dynamic_size": 4096, "ad_hoc_signed": False,
         "from_app_store": True, "beta": False, "device_vpp": False, "validated": True,
         "managed": True},
        {"app_id": "com.example.game", "version": "9", "short_version": "9", "name": "Game",
         "bundle_size": 7, "dynamic_size": 0, "ad_hoc_signed": True, "from_app_store": False,
         "beta": True, "device_vpp": True, "validated": False, "managed": False},
    ],
}
STATE = {
    "tenant_id": "acme", "device_id": "d1", "user_id": "alice", "platform": "IOS",
    "management": "MDM", "ownership": "CORPORATE", "os_version": "17.4", "enrolled": True,
    "compliance": "IN_GRACE_PERIOD", "mam_blocked": False, "mam_wipe_incident": False,
    "output_seq": 3,
    "partners": [
        {"partner_id": "lookout", "health_state": "HIGH", "observed_at": T0 - 1000,
         "event_fingerprint": -123456,
         "threats": [{"category": "app", "name": "evil.ipa", "severity": "CRITICAL"}]},
        {"partner_id": "microsoft-defender-for-endpoint", "health_state": "SECURED",
         "observed_at": T0 - 900, "event_fingerprint": 42, "threats": []},
    ],
    # Failing both iOS compliance policies since lookout's HIGH report, within their graces.
    "graces": [{"policy_id": "cp-ios", "failing_since": T0 - 1000},
               {"policy_id": "cp-sales", "failing_since": T0 - 1000}],
}
STATE_MAM = {
    "tenant_id": "acme", "device_id": "m1", "user_id": None, "platform": "ANDROID",
    "management": "MAM", "ownership": None, "os_version": None, "enrolled": False,
    "compliance": "UNKNOWN", "mam_blocked": True, "mam_wipe_incident": True, "output_seq": 1,
    "partners": [],
}

# decode target selectors (fuzz/fuzz_targets/decode.rs)
DECODE = [
    (0, "DeviceThreatReport", [REPORT, REPORT_MIN]),
    (1, "ConnectorHeartbeat", [HEARTBEAT, HEARTBEAT_ERR]),
    (2, "ConnectorConfig", [CONNECTOR, CONNECTOR_MIN]),
    (3, "ThreatPolicy", [POLICY_CP, POLICY_AP, POLICY_WIPE, POLICY_GROUPS]),
    (4, "DeviceEnrollment", [ENROLLMENT]),
    (5, "AppInventory", [INVENTORY]),
    (6, "DeviceStateRecord", [STATE, STATE_MAM]),
    (9, "GroupMembership", [MEMBERSHIP, MEMBERSHIP_MIN]),
    (10, "TenantSettings", [SETTINGS, SETTINGS_MIN, SETTINGS_EXPIRY]),
]


def full(schema, value):
    """The value with every field present (Avro needs them; JSON may omit optional ones)."""
    out = {}
    for f in schema["fields"]:
        if f["name"] in value:
            out[f["name"]] = value[f["name"]]
        elif "default" in f:
            out[f["name"]] = f["default"]
        elif f["type"] == "boolean":
            out[f["name"]] = False
        else:
            raise ValueError("%s needs %s" % (schema["name"], f["name"]))
    return out


def decode_seeds():
    ids = confluent_ids()
    seeds = {}
    for sel, name, values in DECODE:
        schema = load(name)
        for i, v in enumerate(values):
            v = full(schema, v) if name in ("ConnectorConfig", "ThreatPolicy", "GroupMembership", "TenantSettings") else v
            tag = "%s-%d" % (name, i)
            seeds["%d-%s-json" % (sel, tag)] = bytes([sel]) + js(v)
            seeds["%d-%s-single-object" % (sel, tag)] = bytes([sel]) + single_object(schema, v)
            seeds["%d-%s-confluent" % (sel, tag)] = bytes([sel]) + confluent(ids[name], schema, v)
            if name == "DeviceStateRecord":
                seeds["7-%s-datum" % tag] = bytes([7]) + datum(schema, v)
    # Contract 1.0 writers: the history schemas with their old ids and fingerprints.
    old_ids = {"ThreatPolicy": 1004, "DeviceStateRecord": 1012}
    for sel, name, values in DECODE:
        if name not in old_ids:
            continue
        with open(os.path.join(SCHEMAS, "history", "1.0", name + ".avsc")) as f:
            old = json.load(f)
        names = {f["name"] for f in old["fields"]}
        v = {k: x for k, x in values[0].items() if k in names}
        if name == "DeviceStateRecord":
            v["partners"] = [{k: x for k, x in p.items() if k != "threats"} for p in v["partners"]]
            # IN_GRACE_PERIOD is no 1.0 symbol: a 1.0 instance wrote NONCOMPLIANT.
            if v["compliance"] == "IN_GRACE_PERIOD":
                v["compliance"] = "NONCOMPLIANT"
        v = full(old, v) if name == "ThreatPolicy" else v
        seeds["%d-%s-1.0-single-object" % (sel, name)] = bytes([sel]) + single_object(old, v)
        seeds["%d-%s-1.0-confluent" % (sel, name)] = bytes([sel]) + confluent(old_ids[name], old, v)
    # JSON with optional fields omitted, whitespace in front
    seeds["0-DeviceThreatReport-json-sparse"] = b"\x00 \n" + js(
        {k: v for k, v in REPORT_MIN.items() if k != "threats"}
    )
    # selector 8: the registry decoder (older writer schema: id 77 / its fingerprint; current: 78)
    with open(os.path.join(ROOT, "fuzz", "old_report.avsc")) as f:
        old = json.load(f)
    old_value = {k: v for k, v in REPORT.items() if k != "os_version"}
    old_value["extra"] = "dropped by the reader"
    seeds["8-old-report-confluent-77"] = b"\x08" + confluent(77, old, old_value)
    seeds["8-old-report-single-object"] = b"\x08" + single_object(old, old_value)
    seeds["8-current-report-confluent-78"] = b"\x08" + confluent(78, load("DeviceThreatReport"), REPORT)
    seeds["8-current-report-json"] = b"\x08" + js(REPORT)
    return seeds


def config_seeds():
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Configuration.*?```toml\n(.*?)```", readme, re.S).group(1)
    block = block.replace('"<hostname>"', '"host-1"')
    uncommented = re.sub(r"^# ", "", block, flags=re.M)
    return {
        "readme-configuration": block.encode(),
        "readme-configuration-uncommented": uncommented.encode(),
        "empty": b"",
        "sasl": (
            '[kafka]\nbootstrap_servers = "127.0.0.1:19092"\n[kafka.properties]\n'
            '"security.protocol" = "SASL_PLAINTEXT"\n"sasl.mechanism" = "SCRAM-SHA-512"\n'
            '"sasl.username" = "mtdgate"\n"sasl.password" = "secret"\n'
            '[kafka.consumer]\n"fetch.min.bytes" = "1"\n[kafka.producer]\n"linger.ms" = "5"\n'
        ).encode(),
        "topics-processing-http": (
            '[topics]\ndevice_threats = "a"\npartner_app_inventory = "inv.{partner}"\n'
            'partitions = 12\nreplication_factor = 3\ncreate = true\n'
            '[processing]\nexactly_once = false\ncommit_interval_ms = 1\nmax_batch = 1\n'
            'output_encoding = "avro-confluent"\ncloud = "gcc-high"\n'
            'catalogue = "/etc/p.toml"\nmax_clock_skew_ms = 0\n'
            '[http]\nlisten = "[::1]:0"\nexplain_token = "t"\n'
        ).encode(),
    }


def catalogue_seeds():
    builtin = open(os.path.join(ROOT, "src", "catalogue", "partners.toml"), "rb").read()
    small = (
        b'clouds = ["public", "gcc-high", "21vianet", ""]\n'
        b'[[partner]]\nid = "a"\nname = "A"\nplatforms = ["IOS", "ANDROID"]\nclouds = ["public", ""]\n'
        b'defender = true\n'
        b'[[partner]]\nid = "b"\nname = "B"\nplatforms = ["WINDOWS"]\nclouds = ["gcc-high"]\n'
        b'compliance = false\n'
    )
    return {
        "builtin-public": b"\x00" + builtin,
        "builtin-gcc-high": b"\x01" + builtin,
        "builtin-21vianet": b"\x02" + builtin,
        "small-empty-cloud": b"\x03" + small,
    }


def op(code, arg):
    return bytes([code]) + struct.pack("<H", len(arg)) + arg


def rec(code, key, value):
    k = key.encode()
    return op(code, bytes([len(k)]) + k + value)


def engine_seeds():
    setup = (
        rec(2, "acme/lookout", js(CONNECTOR))
        + rec(2, "acme/microsoft-defender-for-endpoint", js(dict(
            CONNECTOR_MIN, partner_id="microsoft-defender-for-endpoint", provisioned=True,
            setup_complete=True, android_mam_enabled=True, android_enabled=True)))
        + rec(3, "acme/cp-ios", js(POLICY_CP))
        + rec(3, "acme/ap-ios", js(POLICY_AP))
        + rec(3, "acme/ap-wipe", js(POLICY_WIPE))
        + rec(3, "acme/cp-sales", js(POLICY_GROUPS))
        + rec(9, "acme/alice", js(MEMBERSHIP))
        + rec(10, "acme", js(SETTINGS))
        + rec(1, "acme/lookout", js(HEARTBEAT))
    )
    mdm = (
        rec(4, "acme/d1", js(ENROLLMENT))
        + rec(0, "acme/d1", js(REPORT))
        + rec(0, "acme/d1", js(dict(REPORT, event_id="e-3", health_state="SECURED",
                                     observed_at=T0 - 10)))
        + rec(5, "acme/d1", js(INVENTORY))
    )
    mam = (
        rec(0, "acme/m1", js(REPORT_MIN))
        + rec(0, "acme/m1", js(dict(REPORT_MIN, event_id="e-4", health_state="HIGH",
                                     observed_at=T0 - 100)))
        + rec(0, "acme/m2", js(dict(REPORT_MIN, device_id="m2", platform="IOS",
                                     partner_id="lookout", health_state="HIGH")))
    )
    timers = op(6, struct.pack("<I", 3 * 3600)) + op(6, struct.pack("<I", 3 * 86400)) + op(8, b"")
    state = load("DeviceStateRecord")
    restore = rec(7, "acme/d1", single_object(state, STATE)) + rec(7, "acme/m1", js(STATE_MAM))
    return {
        "setup-mdm": setup + mdm,
        "setup-mam": setup + mam,
        "setup-mdm-mam-timers": setup + mdm + mam + timers + rec(1, "acme/lookout", js(
            dict(HEARTBEAT, sent_at=T0 + 3 * 86400 * 1000 + 3 * 3600 * 1000))),
        "restore-then-reports": setup + restore + mdm + op(8, b"") + mam,
        "tombstones": setup + mdm + rec(4, "acme/d1", b"") + rec(2, "acme/lookout", b"")
        + rec(3, "acme/cp-ios", b"") + op(8, b"") + rec(7, "acme/d1", b""),
        # Into the grace period, remediated, failing again (a new grace), the grace ending on
        # the clock, then lookout's last report expiring (report_validity_days 1).
        "grace-remediation-expiry": setup + rec(10, "acme", js(SETTINGS_EXPIRY))
        + rec(4, "acme/d1", js(ENROLLMENT)) + rec(0, "acme/d1", js(REPORT))
        + op(6, struct.pack("<I", 3600))
        + rec(0, "acme/d1", js(dict(REPORT, event_id="e-5", health_state="SECURED", threats=[],
                                     observed_at=T0 + 3600 * 1000)))
        + rec(0, "acme/d1", js(dict(REPORT, event_id="e-6", observed_at=T0 + 3601 * 1000)))
        + op(6, struct.pack("<I", 25 * 3600)) + op(6, struct.pack("<I", 3 * 86400))
        + op(8, b""),
        "membership-and-settings-changes": setup + mdm + mam
        + rec(9, "acme/alice", js(dict(MEMBERSHIP, groups=["contractors"], updated_at=T0)))
        + rec(9, "acme/alice", b"") + rec(10, "acme", b"")
        + rec(10, "acme", js(dict(SETTINGS_MIN, no_policy_state="COMPLIANT", updated_at=T0))),
    }


def write(target, seeds):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds in %s" % (target, len(seeds), os.path.relpath(d, ROOT)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--fingerprints":
        for _, name, _ in DECODE:
            print("%s 0x%016x %s" % (name, fingerprint(load(name)), canonical(load(name))))
        return
    write("decode", decode_seeds())
    write("config", config_seeds())
    write("catalogue", catalogue_seeds())
    write("engine", engine_seeds())


if __name__ == "__main__":
    main()
