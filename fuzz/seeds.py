#!/usr/bin/env python3
"""Adds the seed inputs of every fuzz target to fuzz/corpus/<target>/.

The seeds are the inputs of each module's unit-test tables (issue 18), in
the byte layout each target reads (see the `//!` comment of
fuzz_targets/<target>.rs), plus valid keys, tokens and cursors computed
here so the fuzzer starts past the checksums and signatures.

Usage: python3 fuzz/seeds.py (needs the `cryptography` and `blake3`
packages), then `cargo +nightly fuzz cmin <target>` to drop what adds no
coverage. Files are named by their SHA-1, as libFuzzer names its own, so
running it again adds nothing twice.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import re
import zlib

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = ROOT / "corpus"

BASE62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write(target, items):
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    seen = set()
    for item in items:
        data = item.encode() if isinstance(item, str) else bytes(item)
        name = hashlib.sha1(data).hexdigest()
        if name not in seen:
            seen.add(name)
            (folder / name).write_bytes(data)
    print(f"{target}: {len(seen)} seeds")


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(value):
    return json.dumps(value, separators=(",", ":"))


# --- key_format ---------------------------------------------------------------

def key_checksum(hex64, signed):
    crc = zlib.crc32(signed.encode()) & 0xFFFFFFFF
    if hex64:
        return f"{crc:08x}"
    out = bytearray(b"0" * 6)
    for i in range(5, -1, -1):
        out[i] = BASE62[crc % 62]
        crc //= 62
    return out.decode()


def make_key(prefix, random_part, hex64):
    signed = prefix + random_part
    return signed + key_checksum(hex64, signed)


def key_format():
    good = make_key("kg_live_", "abcDEF0123456789ghijKLMN", False)
    hexkey = make_key("tc_", "0123456789abcdef" * 3 + "01234567", True)
    presented = [
        good,
        hexkey,
        make_key("sk_live_", "Z" * 24, False),
        make_key("a_", "0" * 24, False),
        make_key("ABC9_x1_", "q1w2e3r4t5y6u7i8o9p0AaBb", False),
        "",
        "kg_live_ abc",
        "x" * 513,
        "kg_live_\u00e9",
        "nounderscore",
        "kg_live_short",
        good + "0",
        good.replace("kg_live_", "kg-live_", 1),
        "kg_live_" + "A" * 30,
        "tc_" + "0" * 64,
        "tc_" + "A" * 64,
        good.replace("kg_live_", "kg_test_", 1),
        "sk_live_abcdefgh12345",
        "abcdefghijkl",
        "abcdefghijklmnopq_rstuv",
        "pk-12345678901",
        "sk_live_abc",
        "sk_live_abcdefghij",
        "abcdefghijklmno\u00e9_xyz",
    ]
    items = [b"\x00" + p.encode() for p in presented]
    for i, prefix in enumerate(["kg_live_", "tc_", "sk_live_", "a_", "ABC9_x1_", "kg__"]):
        for mode in (1, 3):
            seed = bytes((i * 37 + j * 11 + mode) % 256 for j in range(32))
            items.append(bytes([mode]) + seed + bytes([i * 5, 0, ord("a")]) + prefix.encode())
    write("key_format", items)


# --- path_normalize -----------------------------------------------------------

PATHS = [
    "/", "/v1/orders", "/v1/orders/", "//v1///orders", "/v1/./orders", "/v1/admin/../orders/1",
    "/../../v1", "/v1/orders/..", "/v1/orders/.", "/..", "/%76%31/%6Frders", "/v1/%2e%2e/admin",
    "/v1/orders/%2E%2E/%2e%2E/admin", "/v1/.%2e/admin", "/a%20b", "/a%3fb", "/caf%C3%A9",
    "/v1/orders/~user_1-x.y", "/v1/..orders", "/v1/orders/42", "/a.b/..c/~d", "//a", "/a//b",
    "/a/./b", "/a/..", "/a%2Fb", "/a b", "/a\\b", "/caf\u00e9", "", "*", "v1/orders", "/v1/%",
    "/v1/%4", "/v1/%zz", "/v1/orders%2F..%2Fadmin", "/v1/orders%2f..%2fadmin", "/v1/orders/..%5Cadmin",
    "/v1/orders\\..\\admin", "/v1/%00", "/v1/%0A", "/v1/a\tb", "/v1/%C0%AE%C0%AE/admin", "/v1/%C0%AF",
    "/v1/%E0%80%AE", "/v1/%C3", "/a/./b/../c//d/", "/%7Euser/x", "/a%20b/..",
    "/public/..;/v1/orders/1", "/public/..;x=1/v1/orders/1", "/public/%2e%2e;/v1/orders/1",
    "/public/%2E%2E;jsessionid=1/v1", "/public/.%2e;/v1", "/public/.;/v1", "/public/..%3B/v1/orders/1",
    "/public/..%3b/v1/orders/1", "/public/..;", "/v1/admin./users", "/v1/admin%2e/users", "/v1/.../admin",
    "/v1/admin%20/users", "/v1/admin.;x/users", "/v1/admin.", "/v1/%EF%BC%8E%EF%BC%8E/admin",
    "/v1/%EF%BC%8Fadmin", "/v1/%EF%BC%BCadmin", "/v1/%E2%80%A5/admin", "/v1/%E2%88%95admin",
    "/v1/%252e%252e/admin", "/v1/%252F", "/v1/%255c", "/v1/%2500", "/v1/..%253B/x",
    "/v1/orders;jsessionid=1/1", "/v1/a.b/.well-known/x", "/v1/..a/.b", "/v1/100%25", "/v1/%2541",
    "/caf%C3%A9/%E3%80%82", "/v1/orders;x=1/1", "/v1/orders%3Bx/1;y", "/v1/;x/1",
    "/v1/\uff0e\uff0e/admin", "/V1/Admin", "/public;x/secret",
]


def path_normalize():
    write("path_normalize", PATHS)


# --- route_table ---------------------------------------------------------------

GLOB_CASES = [
    ("/v1/orders/**", "/v1/orders"), ("/v1/orders/**", "/v1/orders/"), ("/v1/orders/**", "/v1/orders/1/items"),
    ("/v1/orders/**", "/v1/ordersx"), ("/v1/*/items", "/v1/1/items"), ("/v1/*/items", "/v1/1/2/items"),
    ("/v1/*", "/v1/"), ("/v1/*", "/v1"), ("/**", "/"), ("/**", "/anything/at/all"), ("/", "/"), ("/", "/x"),
    ("/healthz", "/healthz"), ("/healthz", "/healthz/"), ("/files/*.json", "/files/a.json"),
    ("/files/*.json", "/files/a/b.json"), ("/a/**/z", "/a/z"), ("/a/**/z", "/a/b/c/z"), ("/a/**/z", "/a/b/z/"),
    ("/a/**/b/**/c", "/a/x/b/y/b/c"), ("/a/**/b/**/c", "/a/x/c"), ("/**/items", "/items"),
    ("/**/items", "/a/b/items"), ("/v1/orders/**", "v1/orders"), ("/V1/**", "/v1/x"),
    ("/caf%C3%A9/*", "/caf%C3%A9/menu"), ("/v1/a/**", "/v1/ab"), ("/**", ""), ("/*a*b*", "/xaybz"),
]
BAD_GLOBS = ["v1/orders", "", "/v1/**x", "/v1/x**", "/v1/***", "/v1//x", "/v1/../x", "/./x", "/v1?x=1",
             "/v1#f", "/v 1", "/caf%c3%a9", "/%41bc", "/a%2Fb", "/a%"]
DEFAULT_TABLE = "\n".join([
    "GET /v1/orders/**",
    "POST,PUT,PATCH /v1/orders/**",
    "!- /public/**",
    "- /v1/*/items",
    "- /v1/**",
])
REQUESTS = ["GET /v1/orders/1", "PATCH /v1/orders", "HEAD /v1/orders/1", "DELETE /v1/orders/1",
            "POST /public/upload", "GET /v1/7/items", "GET /v1/7/8/items", "GET /v2/orders",
            "GET /public/../v1/orders/1", "OPTIONS /v1/x", "HEAD /other", "GET /v1/orders;x/1",
            "get /v1/x"]


def route_table():
    items = [f"GET {path}\n- {glob}" for glob, path in GLOB_CASES]
    items += [f"GET /x\n- {glob}" for glob in BAD_GLOBS]
    items += [f"{request}\n{DEFAULT_TABLE}" for request in REQUESTS]
    write("route_table", items)


# --- config_load -----------------------------------------------------------------

def rust_strings(text):
    """String literals of a Rust file (plain and raw), unescaped roughly."""
    out = []
    for m in re.finditer(r'r(#+)"(.*?)"\1', text, re.S):
        out.append(m.group(2))
    for m in re.finditer(r'(?<![r#\w])"((?:[^"\\]|\\.)*)"', text, re.S):
        s = m.group(1)
        s = s.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\").replace("\\t", "\t")
        out.append(s)
    return out


def config_load():
    items = [p.read_text() for p in [REPO / "config/keygate.toml", *sorted((REPO / "config/examples").glob("*.toml"))]]
    tests = (REPO / "src/config/tests.rs").read_text()
    snippets = [s for s in rust_strings(tests) if ("=" in s or s.startswith("[")) and len(s) < 2000]
    items += snippets
    env = "\0SERVER__LISTEN=0.0.0.0:1\nROUTES__0__PATH=/x\nAUTH__HEADERS=[\"X-Key\"]\nADMIN_TOKEN=Q7v2Lm9Xp4Rt8Wz1Ks6Nd3"
    items.append("[server]\nlisten = \"127.0.0.1:1\"\nmax_header_bytes = 100\n" + env)
    items.append("server.listen = \"x\"\nroutes = [{ path = \"/\" }]\0SERVER__LISTEN__PORT=1\nROUTES__5__PATH=/x\nROUTES__PATH=/x")
    items.append("\0SERVER____LISTEN=x\nSERVER__=x\nKEYS__DEFAULT_PREFIX=123\nSERVER__LISEN=1")
    write("config_load", items)


# --- jwt_verify --------------------------------------------------------------------

DUPLICATE_ALG = '{"alg":"HS256","alg":"none","typ":"JWT","kid":"hs"}'
HS_SECRET = b"fuzz-only-hs256-secret-0123456789abcdef"
NOW = 1_795_000_000


def jwt_verify():
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([1] * 32))
    es_key = ec.derive_private_key(int.from_bytes(bytes([2] * 32), "big"), ec.SECP256R1())

    def sign(kid, data):
        if kid == "hs":
            return hmac.new(HS_SECRET, data, hashlib.sha256).digest()
        if kid == "ed":
            return ed_key.sign(data)
        r, s = decode_dss_signature(es_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    alg = {"hs": "HS256", "ed": "EdDSA", "es": "ES256"}

    def claims(**over):
        c = {"iss": "keygate", "sub": "key_01jd3m5k7r9t2v4w6x8y0z1a2b", "exp": NOW + 7200, "iat": NOW,
             "jti": "jti-1", "sid": "ses_01jd3m5k7r9t2v4w6x8y0z1a2c", "scope": "read write"}
        c.update(over)
        # serde's field order, so a seed is byte for byte what keygate issues.
        order = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "scope"]
        return {k: c[k] for k in order if c.get(k) is not None}

    def token(kid, payload, header=None):
        header = header or {"alg": alg[kid], "typ": "JWT", "kid": kid}
        head = b64(compact(header)) + "." + b64(compact(payload))
        return head + "." + b64(sign(kid, head.encode()))

    good = claims()
    hs = token("hs", good)
    h, p, s = hs.split(".")
    presented = [
        hs, token("ed", good), token("es", good),
        token("hs", claims(aud="api")), token("hs", claims(iss=None)),
        f"{b64(compact({'alg': 'none', 'typ': 'JWT', 'kid': 'hs'}))}.{p}.",
        f"{b64(compact({'alg': 'NONE', 'typ': 'JWT'}))}.{p}.",
        token("hs", good, {"alg": "RS256", "typ": "JWT", "kid": "hs"}),
        token("hs", good, {"alg": "HS256", "typ": "JWT"}),
        token("hs", good, {"alg": "HS256", "typ": "JWT", "kid": "hs", "crit": ["exp"]}),
        token("hs", good, {"alg": "HS256", "typ": "at+jwt", "kid": "hs"}),
        token("hs", good, {"alg": "HS256", "kid": "hs"}),
        token("hs", good, {"alg": "HS256", "typ": "JWT", "kid": "stranger"}),
        f"{h}.{b64(compact(claims(scope='read write admin')))}.{s}",
        f"{h}.{p}.{'B' if s.startswith('A') else 'A'}{s[1:]}",
        f"{h}.{p}.", f"{h}.{p}", f"{hs}.{s}", "", f"@@@.{p}.{s}", f"{h}=.{p}.{s}",
        f"{b64('not json')}.{p}.{s}",
        b64(DUPLICATE_ALG) + f".{p}.{s}",
        token("hs", claims(exp=NOW)), token("hs", claims(nbf=NOW + 3600)), token("hs", claims(iat=NOW + 3600)),
        token("hs", claims(aud=["api"])), token("hs", claims(exp=1.5e9)),
    ]
    items = [b"\x00" + t.encode() for t in presented]
    for signer in range(3):
        for flags in (0, 1, 3, 7):
            items.append(bytes([1, signer, flags, 60, 0, 10]) + b"read write" + bytes([5]) + b"jti-1"
                         + bytes([7, 0, 0x41, 200, 0, 0]))
    write("jwt_verify", items)


# --- refresh_token ---------------------------------------------------------------

def refresh_token():
    ulid = "01jd3m5k7r9t2v4w6x8y0z1a2b"
    hexs = "9f0c" * 16
    presented = [
        f"kgr_{ulid}_0_{hexs}", f"kgr_{ulid}_3_{hexs}", f"kgr_{ulid}_18446744073709551615_{hexs}",
        "", f"kgx_{ulid}_0_{hexs}", f"{ulid}_0_{hexs}", f"kgr_{ulid.upper()}_0_{hexs}", f"kgr_{ulid[1:]}_0_{hexs}",
        f"kgr_{ulid}_00_{hexs}", f"kgr_{ulid}_01_{hexs}", f"kgr_{ulid}_+1_{hexs}", f"kgr_{ulid}__{hexs}",
        f"kgr_{ulid}_99999999999999999999_{hexs}", f"kgr_{ulid}_0_{hexs.upper()}", f"kgr_{ulid}_0_{hexs[2:]}",
        f"kgr_{ulid}_0_{hexs}00", f"kgr_{ulid}_0_{hexs}_x", f"kgr_{ulid}_0_{'g' * 64}",
        f"kgr_{ulid}_0_{hexs}{'0' * 100}",
    ]
    items = [b"\x00" + t.encode() for t in presented]
    for i in range(6):
        seed = bytes((i * 29 + j * 7) % 256 for j in range(32))
        edits = bytes([[5, 40, 60, 100, 120, 150][i], [0, ord("a"), ord("0"), ord("_"), 0, ord("Z")][i]])
        items.append(b"\x01" + seed + edits)
    write("refresh_token", items)


# --- http1_framing ----------------------------------------------------------------

def http1_framing():
    plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with_body = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
    smuggle = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    inner = (b"POST / HTTP/1.1\r\nContent-Length: 61\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\n"
             b"Transfer-Encoding: x\r\n\r\n..")
    streams = [
        plain + with_body + chunked, smuggle, plain + with_body + chunked + smuggle, inner + plain,
        b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\nPOST / HTTP/1.1\r\ncontent-length: 1\ntransfer-encoding: chunked\n\r\n",
        b"POST / HTTP/1.1\nContent-Length: 48\n\nPOST / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: x\n\n",
        b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\nbody",
        b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n" + smuggle,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + smuggle,
        b"\r\n\r\n" + smuggle,
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n" + smuggle,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + smuggle,
        chunked.replace(b"5;x=1", b"0005") + smuggle,
    ]
    items = [bytes([i * 41 % 256]) + s for i, s in enumerate(streams)]
    write("http1_framing", items)


# --- admin_cursor ------------------------------------------------------------------

def admin_cursor():
    import blake3

    phc = b"$argon2id$v=19$m=16,t=2,p=1$c2FsdA$aGFzaA"
    env = b"fuzz-admin-token"
    material = len(phc).to_bytes(8, "little") + phc + b"E" + len(env).to_bytes(8, "little") + env
    key = blake3.blake3(material, derive_key_context="keygate 2026-11 admin API page cursor v1").digest()

    def sign(position):
        payload = compact(position).encode()
        return b64(payload) + "." + b64(blake3.blake3(payload, key=key).digest())

    keys = {"list": "keys", "after": "key_01jd0000000000000000000000", "owner": "acme", "status": "active"}
    cursor = sign(keys)
    payload, mac = cursor.split(".")
    presented = [
        cursor, sign({"list": "audit", "after": 42}),
        sign({"list": "keys", "after": "key_x", "owner": None, "status": None}),
        "", "nodot", f"{payload}.", f"{payload}.{mac}x", f"!!.{mac}",
        f"{payload}.{'B' if mac.startswith('A') else 'A'}{mac[1:]}",
    ]
    items = [b"\x00" + c.encode() for c in presented]
    items.append(b"\x01\x00" + (42).to_bytes(8, "little") + bytes([1, 0, 7]))
    items.append(b"\x01\x0b" + bytes([5]) + b"key_x" + bytes([4]) + b"acme" + bytes([3, 0, 0]))
    write("admin_cursor", items)


# --- import_line --------------------------------------------------------------------

def import_line():
    lines = [
        '{"key": "sk_live_abcdefgh0001", "name": "one", "scopes": ["read"], "plan": "pro", "owner": "acme"}',
        '{"key": "sk_live_abcdefgh0002", "plan": "gold"}',
        "not json", "",
        '{"key": "sk_live_abcdefgh0001"}', '{"key": "short"}',
        '{"key": "pk-123456789", "prefix": "pk-", "expires_at": "yesterday"}',
        '{"key": "sk_live_abcdefgh0009", "colour": "red"}',
        '{"key": "sk_live_abcdefgh0002", "name": "two"}',
        '{"key": "pk-123456789", "prefix": "pk-", "expires_at": "2030-01-01T00:00:00Z"}',
        '{"key": "abcdefghijklmnopq_rstuv", "status": "inactive", "metadata": {"a": 1}}',
        '{"key": "sk_live_abcdefghij", "prefix": "pk_"}',
        '{"key": "sk_live_abcdefgh0003", "status": "revoked", "metadata": [1]}',
        '{"key": "sk_live_abcdefgh0004", "scopes": ["read", "bad scope"], "name": ""}',
        '{"key": "Q7v2Lm9Xp4Rt8Wz1Ks6Nd3", "owner": "x\\u0001y"}',
        '{"key": "caf\\u00e9caf\\u00e9caf\\u00e9"}',
    ]
    write("import_line", lines)


if __name__ == "__main__":
    key_format()
    path_normalize()
    route_table()
    config_load()
    jwt_verify()
    refresh_token()
    http1_framing()
    admin_cursor()
    import_line()
