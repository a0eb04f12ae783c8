#!/usr/bin/env python3
"""Independent RFC 9162 Merkle tree reference (hashlib only): prints the test vectors that
tests/vectors/merkle.json holds. The definitions are the RFC's recursive ones, written
separately from the Rust implementation so each checks the other.

Leaf data: SHA-256 of b"auditflow row <i>" (32 bytes, like a chain's row hashes)."""
import hashlib
import json

def H(b):
    return hashlib.sha256(b).digest()

def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k

def mth(d):
    if len(d) == 0:
        return H(b"")
    if len(d) == 1:
        return H(b"\x00" + d[0])
    k = split(len(d))
    return H(b"\x01" + mth(d[:k]) + mth(d[k:]))

def path(m, d):
    if len(d) <= 1:
        return []
    k = split(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]

def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = split(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]

LEAVES = [H(b"auditflow row %d" % i) for i in range(13)]

def main():
    hx = lambda hs: [h.hex() for h in hs]
    out = {
        "leaves": hx(LEAVES),
        "roots": [mth(LEAVES[:n]).hex() for n in range(len(LEAVES) + 1)],
        "inclusion": [
            {"treeSize": n, "leafIndex": m, "path": hx(path(m, LEAVES[:n]))}
            for n in range(1, len(LEAVES) + 1) for m in range(n)
        ],
        "consistency": [
            {"fromSize": m, "toSize": n, "path": hx(subproof(m, LEAVES[:n], True))}
            for n in range(1, len(LEAVES) + 1) for m in range(1, n + 1)
        ],
    }
    print(json.dumps(out, indent=1))

if __name__ == "__main__":
    main()
