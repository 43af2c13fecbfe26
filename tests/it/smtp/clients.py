#!/usr/bin/env python3
"""Real-client scenarios against the gateway's SMTP endpoint (driven by tests/it/smtp_clients.rs).

Usage: clients.py SCENARIO HOST PORT CERT [ARGS...] (ARGS: the scenario's own)

Each scenario speaks SMTP with Python's smtplib (or a raw socket where smtplib cannot do it:
pipelining, BDAT, smuggling) and prints the server's replies as `REPLY <label> <code> <text>`
lines; the Rust test asserts on them and on what the archive holds. Anything unexpected on the
client side raises, so the script exits non-zero.
"""

import socket
import smtplib
import ssl
import sys

JOURNAL = "journal@journal.test"


def report(label, code, text=""):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    print(f"REPLY {label} {code} {text}", flush=True)


def message(msgid, subject="test", body="Hello from Python.\r\n", extra_headers=""):
    return (
        f"From: sender@corp.test\r\nTo: {JOURNAL}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{msgid}>\r\n{extra_headers}\r\n{body}"
    ).encode()


def tls_context(cert):
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = True
    return ctx


class Raw:
    """A line-oriented raw SMTP connection, for what smtplib cannot do."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=20)
        self.file = self.sock.makefile("rb")

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self, label):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError(f"{label}: connection closed; so far {lines}")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = lines[-1][:3]
        report(label, code, " | ".join(l[4:] for l in lines))
        return code

    def close(self):
        self.sock.close()


def plain(host, port, cert):
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        code, text = s.ehlo()
        report("ehlo", code, text)
        refused = s.sendmail("sender@corp.test", [JOURNAL], message("py-plain@corp.test"))
        report("refused", len(refused))
        code, text = s.noop()
        report("noop", code, text)


def starttls(host, port, cert):
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        code, text = s.starttls(context=tls_context(cert))
        report("starttls", code, text)
        code, text = s.ehlo()
        report("ehlo-tls", code, text)
        report("cipher", 0, s.sock.version())
        s.sendmail("sender@corp.test", [JOURNAL], message("py-starttls@corp.test"))
        report("sent", 250)


def implicit(host, port, cert):
    # PORT is the implicit-TLS port here.
    with smtplib.SMTP_SSL(host, port, local_hostname="client.test", timeout=20, context=tls_context(cert)) as s:
        code, text = s.ehlo()
        report("ehlo", code, text)
        s.sendmail("sender@corp.test", [JOURNAL], message("py-implicit@corp.test"))
        report("sent", 250)


def eightbit(host, port, cert):
    body = "Grüße aus Köln, naïve café\r\n".encode("utf-8") + b"latin-1 byte: \xe9\r\n"
    msg = (
        b"From: sender@corp.test\r\nTo: " + JOURNAL.encode() + b"\r\nSubject: 8bit\r\n"
        b"Message-ID: <py-8bit@corp.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body
    )
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        report("has8bitmime", 1 if s.has_extn("8bitmime") else 0)
        s.sendmail("sender@corp.test", [JOURNAL], msg, mail_options=["BODY=8BITMIME"])
        report("sent", 250)


def smtputf8(host, port, cert):
    sender = "jörg@bücher.test"
    msg = (
        f"From: {sender}\r\nTo: {JOURNAL}\r\nSubject: ünïcödé\r\nMessage-ID: <py-utf8@corp.test>\r\n\r\nHallo\r\n"
    ).encode("utf-8")
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        report("hasutf8", 1 if s.has_extn("smtputf8") else 0)
        s.sendmail(sender, [JOURNAL], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        report("sent", 250)


def pipelining(host, port, cert):
    c = Raw(host, port)
    c.reply("greeting")
    c.send("EHLO client.test\r\n")
    c.reply("ehlo")
    # One write: the whole envelope (RFC 2920 group ending with DATA).
    c.send(f"MAIL FROM:<a@corp.test>\r\nRCPT TO:<nobody@corp.test>\r\nRCPT TO:<{JOURNAL}>\r\nDATA\r\n")
    c.reply("mail")
    c.reply("rcpt-bad")
    c.reply("rcpt")
    c.reply("data")
    # The message, then the next transaction and QUIT, in one write.
    c.send(
        message("py-pipe-1@corp.test").replace(b"\r\n.", b"\r\n..") + b".\r\n"
        + f"MAIL FROM:<b@corp.test>\r\nRCPT TO:<{JOURNAL}>\r\nDATA\r\n".encode()
    )
    c.reply("end1")
    c.reply("mail2")
    c.reply("rcpt2")
    c.reply("data2")
    c.send(message("py-pipe-2@corp.test") + b".\r\nQUIT\r\n")
    c.reply("end2")
    c.reply("quit")
    c.close()


def bdat(host, port, cert):
    c = Raw(host, port)
    c.reply("greeting")
    c.send("EHLO client.test\r\n")
    c.reply("ehlo")
    c.send(f"MAIL FROM:<a@corp.test>\r\nRCPT TO:<{JOURNAL}>\r\n")
    c.reply("mail")
    c.reply("rcpt")
    chunks = [
        b"From: a@corp.test\r\nSubject: chunked\r\nMessage-ID: <py-bdat@corp.test>\r\n\r\n",
        b"bare LF here:\nand a fake end:\r\n.\r\nMAIL FROM:<evil@x.test>\r\n",
        b"NUL:\x00 high:\xff\r\n.. dots stay\r\n",
    ]
    for i, chunk in enumerate(chunks[:-1]):
        c.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        c.reply(f"chunk{i}")
    last = chunks[-1]
    c.send(f"BDAT {len(last)} LAST\r\n".encode() + last)
    c.reply("last")
    c.send("QUIT\r\n")
    c.reply("quit")
    c.close()
    sys.stdout.write("BODY " + b"".join(chunks).hex() + "\n")


def smuggle(host, port, cert):
    c = Raw(host, port)
    c.reply("greeting")
    c.send("EHLO client.test\r\n")
    c.reply("ehlo")
    c.send(f"MAIL FROM:<a@corp.test>\r\nRCPT TO:<{JOURNAL}>\r\nDATA\r\n")
    c.reply("mail")
    c.reply("rcpt")
    c.reply("data")
    c.send(
        b"From: a@corp.test\r\nMessage-ID: <py-smuggle-outer@corp.test>\r\n\r\nbody\n.\n"
        + f"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<{JOURNAL}>\r\nDATA\r\n".encode()
        + b"From: evil@attacker.test\r\nMessage-ID: <py-smuggle-inner@attacker.test>\r\n\r\nspoofed\r\n.\r\n"
    )
    c.reply("end")
    c.send("QUIT\r\n")
    c.reply("quit")
    c.close()


def rejections(host, port, cert):
    c = Raw(host, port)
    c.reply("greeting")
    c.send("MAIL FROM:<a@corp.test>\r\n")
    c.reply("mail-before-ehlo")
    c.send("EHLO client.test\r\n")
    c.reply("ehlo")
    c.send("NOOP " + "x" * 600 + "\r\n")
    c.reply("long-line")
    c.close()
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        try:
            s.sendmail("a@corp.test", ["ceo@corp.test"], message("py-wrong-rcpt@corp.test"))
            report("wrong-rcpt", "accepted")
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["ceo@corp.test"]
            report("wrong-rcpt", code, text)
        s.rset()
        # smtplib adds SIZE= itself when the server advertises SIZE.
        big = message("py-big@corp.test", body="y" * 998 + "\r\n") * 1
        big = big + (b"z" * 998 + b"\r\n") * 200
        try:
            s.sendmail("a@corp.test", [JOURNAL], big)
            report("size-param", "accepted")
        except smtplib.SMTPSenderRefused as e:
            report("size-param", e.smtp_code, e.smtp_error)
    # Over the limit without a SIZE parameter: refused after the data.
    c = Raw(host, port)
    c.reply("greeting")
    c.send("EHLO client.test\r\n")
    c.reply("ehlo")
    c.send(f"MAIL FROM:<a@corp.test>\r\nRCPT TO:<{JOURNAL}>\r\nDATA\r\n")
    c.reply("mail")
    c.reply("rcpt")
    c.reply("data")
    c.send(b"Message-ID: <py-big-data@corp.test>\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200 + b".\r\n")
    c.reply("size-data")
    c.send("QUIT\r\n")
    c.reply("quit")
    c.close()


def starttls_required(host, port, cert):
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        code, text = s.docmd("MAIL FROM:<a@corp.test>")
        report("mail-clear", code, text)
        s.starttls(context=tls_context(cert))
        s.ehlo()
        s.sendmail("sender@corp.test", [JOURNAL], message("py-required@corp.test"))
        report("sent", 250)


def auth_brute_force(host, port, cert, user, password, attempts, chains):
    """Password guessing from 127.0.0.1 (`chains` connections in parallel, `attempts` AUTH
    commands in all, each connection reopened when the server closes it), and meanwhile a good
    client from 127.0.0.2. Prints `MEASURE name value` lines (milliseconds)."""
    import base64
    import threading
    import time

    attempts, chains = int(attempts), int(chains)
    lock = threading.Lock()
    done = [0]
    latencies = []  # (sequence number, ms)

    def connect(source):
        s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=60,
                         source_address=(source, 0))
        s.ehlo()
        s.starttls(context=tls_context(cert))
        s.ehlo()
        return s

    def attack():
        s = None
        while True:
            with lock:
                if done[0] >= attempts:
                    break
                done[0] += 1
                n = done[0]
            if s is None:
                s = connect("127.0.0.1")
            wrong = base64.b64encode(f"\0{user}\0wrong-{n}".encode()).decode()
            start = time.monotonic()
            try:
                code, _ = s.docmd("AUTH", "PLAIN " + wrong)
            except smtplib.SMTPServerDisconnected:
                code = 421
            ms = (time.monotonic() - start) * 1000
            if code not in (535, 421):
                raise RuntimeError(f"wrong password answered {code}")
            with lock:
                latencies.append((n, ms))
            if code == 421:
                s.close()
                s = None
        if s is not None:
            s.close()

    threads = [threading.Thread(target=attack) for _ in range(chains)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while True:
        with lock:
            if done[0] >= attempts // 2:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the attack did not get halfway in 120 s")
        time.sleep(0.05)
    s = connect("127.0.0.2")
    start = time.monotonic()
    s.login(user, password)
    good_ms = (time.monotonic() - start) * 1000
    s.sendmail("sender@corp.test", [JOURNAL], message("py-auth-good@corp.test"))
    s.quit()
    for t in threads:
        t.join()
    late = [ms for n, ms in latencies if n > attempts // 2]
    print(f"MEASURE attempts {len(latencies)}", flush=True)
    print(f"MEASURE attack_first_ms {min(ms for n, ms in latencies if n == 1):.1f}")
    print(f"MEASURE attack_late_min_ms {min(late):.1f}")
    print(f"MEASURE attack_late_avg_ms {sum(late) / len(late):.1f}")
    print(f"MEASURE good_auth_ms {good_ms:.1f}", flush=True)


SCENARIOS = {
    "plain": plain,
    "starttls": starttls,
    "implicit": implicit,
    "8bitmime": eightbit,
    "smtputf8": smtputf8,
    "pipelining": pipelining,
    "bdat": bdat,
    "smuggle": smuggle,
    "rejections": rejections,
    "starttls-required": starttls_required,
    "auth-brute-force": auth_brute_force,
}

if __name__ == "__main__":
    scenario, host, port, cert = sys.argv[1:5]
    SCENARIOS[scenario](host, int(port), cert, *sys.argv[5:])
