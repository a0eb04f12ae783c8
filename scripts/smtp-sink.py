#!/usr/bin/env python3
"""A real SMTP server for the alert tests (aiosmtpd), listening on 127.0.0.1.

Every message received is stored in DIR as NNNN.eml (the exact bytes received) and, written
just before it, NNNN.json (envelope, headers and MIME parts as Python's e-mail parser reads
them), so tests can check both the wire format and what a mail client would show.

    python3 scripts/smtp-sink.py --port 2525 --dir /tmp/mails

Prints "ready <port>" once it accepts connections; stops on SIGTERM/SIGINT.
Installed by `scripts/stack up` (pip install aiosmtpd).
"""
import argparse
import email
import email.policy
import itertools
import json
import os
import signal
import threading

from aiosmtpd.controller import Controller


class StoreHandler:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        with self.lock:
            n = next(self.counter)
        base = os.path.join(self.directory, f"{n:04d}")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            try:
                body = part.get_content()
            except Exception as e:  # keep going: a broken part is what a test wants to see
                body = f"<undecodable: {e}>"
            parts.append({"content_type": part.get_content_type(), "body": body})
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": [[k, str(v)] for k, v in msg.items()],
            "parts": parts,
        }
        with open(base + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(raw)
        os.replace(base + ".eml.tmp", base + ".eml")
        return "250 Message accepted for delivery"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    controller = Controller(StoreHandler(args.dir), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"ready {args.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
