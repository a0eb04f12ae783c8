#!/usr/bin/env python3
"""Check an auditflow proof with nothing but Python's standard library, following the byte
layout in the README ("Proof format"): recompute the row hash from the stored fields, walk
the audit path (or consistency path) to the signed tree head, and print the checkpoint
statement whose Ed25519 signature any Ed25519 library checks against the ledger's key.

usage: verify_proof.py PROOF.json    (exit 0: the hashes hold; 1: they do not)"""
import hashlib
import json
import sys

def H(b):
    return hashlib.sha256(b).digest()

def put_bytes(b):
    return len(b).to_bytes(8, "big") + b

def opt_str(s):
    return b"\x00" if s is None else b"\x01" + put_bytes(s.encode())

def opt_i64(v):
    return b"\x00" if v is None else b"\x01" + v.to_bytes(8, "big", signed=True)

def i64(v):
    return v.to_bytes(8, "big", signed=True)

def canonical(r):
    out = b"auditflow.audit_events.v1"
    out += put_bytes(r["id"].encode()) + i64(r["timestampUs"])
    out += opt_str(r.get("userId")) + opt_str(r.get("sessionId"))
    out += put_bytes(r["action"].encode()) + put_bytes(r["resource"].encode())
    out += opt_str(r.get("resourceId")) + opt_str(r.get("method")) + opt_str(r.get("endpoint"))
    out += opt_i64(r.get("statusCode")) + opt_str(r.get("userAgent")) + opt_str(r.get("ipAddress"))
    out += opt_str(r.get("location")) + opt_str(r.get("ipFacts"))
    out += put_bytes(r["classification"].encode()) + put_bytes(r["severity"].encode())
    out += opt_str(r.get("metadata")) + (b"\x01" if r["success"] else b"\x00")
    out += opt_str(r.get("errorMessage")) + opt_i64(r.get("duration"))
    out += put_bytes(r["compliance"].encode()) + put_bytes(r["sourceTopic"].encode())
    out += r["sourcePartition"].to_bytes(4, "big", signed=True) + i64(r["sourceOffset"]) + i64(r["enrichedAtUs"])
    out += opt_str(r.get("subjectPseudonym")) + opt_str(r.get("userPseudonym")) + opt_i64(r.get("keyGeneration"))
    p = r.get("personal")
    out += b"\x00" if p is None else b"\x01" + put_bytes(bytes.fromhex(p))
    out += put_bytes(r["chainId"].encode()) + i64(r["chainSeq"])
    return out

def node(l, r):
    return H(b"\x01" + l + r)

def root_from_inclusion(leaf_data, index, size, path):
    fn, sn, r = index, size - 1, H(b"\x00" + leaf_data)
    for p in path:
        if sn == 0:
            raise ValueError("path too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("path too short")
    return r

def roots_from_consistency(m, n, first_root, path):
    path = ([first_root] if m & (m - 1) == 0 else []) + path
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ValueError("path too long")
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("path too short")
    return fr, sr

def statement(cp):
    from datetime import datetime
    t = datetime.fromisoformat(cp["signedAt"].replace("Z", "+00:00"))
    micros = (int(t.timestamp()) * 1_000_000) + t.microsecond
    return ("auditflow-checkpoint-v2\nchain=%s\nseq=%d\nhead=%s\ntree_size=%d\ntree_root=%s\nsigned_at=%d"
            % (cp["chainId"], cp["seq"], cp["headHash"], cp["treeSize"], cp["treeRoot"], micros)).encode()

def main():
    p = json.load(open(sys.argv[1]))
    if p["type"] == "auditflow-inclusion-proof-v1":
        cp, row = p["checkpoint"], p["row"]
        rh = H(bytes.fromhex(p["prevHash"]) + canonical(row))
        ok = rh.hex() == p["rowHash"] and row["chainSeq"] == p["leafIndex"] + 1 and p["treeSize"] == cp["treeSize"] == cp["seq"]
        ok = ok and root_from_inclusion(rh, p["leafIndex"], p["treeSize"], [bytes.fromhex(h) for h in p["auditPath"]]).hex() == cp["treeRoot"]
        print("rowHash", rh.hex())
    else:
        a, b = p["fromCheckpoint"], p["toCheckpoint"]
        fr, sr = roots_from_consistency(p["fromSize"], p["toSize"], bytes.fromhex(a["treeRoot"]), [bytes.fromhex(h) for h in p["path"]])
        ok = fr.hex() == a["treeRoot"] and sr.hex() == b["treeRoot"]
        cp = b
    print("statement", statement(cp).hex())
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
