#!/usr/bin/env python3
"""Sends numbered messages one after another and logs each one the server accepted.

Usage: sender.py HOST PORT PREFIX COUNT

Prints `ACK <message-id>` (flushed) right after each 250 to end-of-data, so a test that kills the
server knows exactly which messages were acknowledged. Stops quietly at the first connection
error (the server was killed): that is the expected end.
"""

import smtplib
import sys

JOURNAL = "journal@journal.test"


def main():
    host, port, prefix, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    body = ("Line of a journaled message, padding it to about nine kilobytes.\r\n" * 140)
    try:
        s = smtplib.SMTP(host, port, local_hostname="sender.test", timeout=30)
        s.ehlo()
        for i in range(count):
            msgid = f"{prefix}-{i}@sender.test"
            msg = (
                f"From: sender@corp.test\r\nTo: {JOURNAL}\r\nSubject: message {i}\r\n"
                f"Message-ID: <{msgid}>\r\n\r\n{body}"
            ).encode()
            s.sendmail("sender@corp.test", [JOURNAL], msg)  # raises unless 250
            print(f"ACK {msgid}", flush=True)
    except (OSError, smtplib.SMTPException) as e:
        print(f"STOPPED {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
