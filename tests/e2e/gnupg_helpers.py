# SPDX-License-Identifier: GPL-3.0-or-later
"""GnuPG 2.2 driven without a person: a private GNUPGHOME, the scripted pinentry, and
``--card-edit`` answered keyword by keyword from ``--status-fd`` (GET_LINE / GET_BOOL).

Used by tests/e2e/test_openpgp.py (through the USB gadget), tests/cards/test_openpgp_gnupg.py
(through pcscd + vsmartcard's vpcd, no USB) and scripts/bench_openpgp.py.  Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
PINENTRY = HERE / "scripted_pinentry.py"

DEFAULT_PIN = "123456"
DEFAULT_ADMIN_PIN = "12345678"


class GpgError(AssertionError):
    pass


class GnuPG:
    """One GNUPGHOME with its agent and scdaemon.

    ``scdaemon_options``: lines for scdaemon.conf (``disable-ccid``, ``reader-port ...``,
    ``pcsc-shared``...).  ``pins`` (a dict) feeds the scripted pinentry: keys ``pin``, ``admin``,
    ``new_pin``, ``new_admin``, ``reset_code``, ``new_reset_code``.
    """

    def __init__(self, home: Path, scdaemon_options: Iterable[str] = ("disable-ccid",),
                 ssh: bool = False, log_dir: Path | None = None) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        self.log_dir = Path(log_dir) if log_dir else self.home
        self.rules = self.home / "pinentry-rules.json"
        self.env = {**os.environ, "GNUPGHOME": str(self.home), "PINENTRY_RULES": str(self.rules),
                    "LC_ALL": "C", "LANG": "C"}
        self.env.pop("GPG_AGENT_INFO", None)
        self.env.pop("DISPLAY", None)
        agent = [f"pinentry-program {PINENTRY}", "allow-loopback-pinentry",
                 f"log-file {self.log_dir / 'gpg-agent.log'}", "debug-level basic"]
        if ssh:
            agent.append("enable-ssh-support")
        (self.home / "gpg-agent.conf").write_text("\n".join(agent) + "\n")
        scd = list(scdaemon_options) + [f"log-file {self.log_dir / 'scdaemon.log'}", "debug-level basic"]
        (self.home / "scdaemon.conf").write_text("\n".join(scd) + "\n")
        (self.home / "gpg.conf").write_text("no-greeting\nno-permission-warning\n")
        self.set_pins()

    # -- pins ------------------------------------------------------------------------------
    def set_pins(self, pin: str = DEFAULT_PIN, admin: str = DEFAULT_ADMIN_PIN, new_pin: str | None = None,
                 new_admin: str | None = None, reset_code: str | None = None,
                 new_reset_code: str | None = None) -> None:
        """Rules in order: the repeat prompts and 'New ...' before the plain ones."""
        rules = []
        if new_reset_code is not None:
            rules += [["Repeat this Reset Code", new_reset_code], ["New Reset Code", new_reset_code]]
        if new_admin is not None:
            rules += [["New Admin PIN", new_admin]]
        if new_pin is not None:
            rules += [["New PIN", new_pin]]
        if new_admin is not None or new_pin is not None:
            # the agent asks "Repeat this PIN" for a new PIN and a new Admin PIN alike
            rules += [["Repeat this PIN", new_admin if new_admin is not None else new_pin]]
        if reset_code is not None:
            rules += [["Reset Code", reset_code]]
        rules += [["Admin PIN", admin], ["PIN", pin]]
        self.rules.write_text(json.dumps(rules))

    def pinentry_log(self) -> list[dict]:
        path = Path(str(self.rules) + ".log")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- plain commands --------------------------------------------------------------------
    def run(self, args: Sequence[str], *, input: bytes | str | None = None, check: bool = True,
            timeout: float = 120, binary: str = "gpg") -> subprocess.CompletedProcess:
        argv = [binary, *args] if binary else list(args)
        text = not isinstance(input, bytes)
        try:
            p = subprocess.run(argv, input=input, env=self.env, capture_output=True, text=text, timeout=timeout,
                               cwd=self.home, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise GpgError(f"timed out after {timeout} s: {argv}\n{e.stdout}\n{e.stderr}\n{self.scd_log_tail()}") \
                from None
        if check and p.returncode != 0:
            raise GpgError(f"exit {p.returncode}: {argv}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}\n"
                           f"{self.scd_log_tail()}")
        return p

    def gpg(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["--batch", *args], **kw)

    def card_status(self) -> str:
        return self.gpg("--card-status").stdout

    def card_info(self) -> dict[str, list[str]]:
        """``gpg --card-status --with-colons`` as {field: values}."""
        out = self.gpg("--with-colons", "--card-status").stdout
        info: dict[str, list[str]] = {}
        for line in out.splitlines():
            parts = line.split(":")
            info[parts[0]] = parts[1:]
        return info

    def agent(self, *commands: str, check: bool = True) -> str:
        """gpg-connect-agent commands (``scd ...``); returns the transcript."""
        p = self.run([*commands, "/bye"], binary="gpg-connect-agent", check=check)
        return p.stdout + p.stderr

    def kill(self) -> None:
        self.kill_scdaemon()
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, timeout=30)

    def kill_scdaemon(self, timeout: float = 15) -> None:
        """Stop scdaemon and wait until it is gone: with its own CCID driver it holds the USB
        interface, and a new scdaemon started before the old one let go cannot claim it."""
        subprocess.run(["gpgconf", "--kill", "scdaemon"], env=self.env, capture_output=True, timeout=30)
        socket_path = self.home / "S.scdaemon"
        deadline = time.monotonic() + timeout
        while socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart_scdaemon(self, timeout: float = 20) -> None:
        """A fresh scdaemon: it forgets the PINs it verified, and the card is reset."""
        self.kill_scdaemon()
        deadline = time.monotonic() + timeout
        while True:
            p = self.run(["scd serialno", "/bye"], binary="gpg-connect-agent", check=False)
            if "SERIALNO" in p.stdout:
                return
            if time.monotonic() > deadline:
                raise GpgError(f"scdaemon did not come back: {p.stdout} {p.stderr}\n{self.scd_log_tail()}")
            time.sleep(0.2)

    def scd_log_tail(self, n: int = 40) -> str:
        path = self.log_dir / "scdaemon.log"
        if not path.exists():
            return "(no scdaemon log)"
        lines = path.read_text(errors="replace").splitlines()
        return "--- scdaemon.log (tail) ---\n" + "\n".join(lines[-n:])

    # -- interactive menus, answered from the status fd ---------------------------------------
    def edit(self, args: Sequence[str], answers: dict[str, object], *, timeout: float = 120,
             check: bool = True) -> tuple[int, str]:
        """Run gpg with --command-fd/--status-fd; answer each GET_LINE/GET_BOOL/GET_HIDDEN by keyword.

        ``answers[keyword]`` is a string (the same answer every time) or a list consumed in order.
        An unexpected prompt ends the session with GpgError (the transcript says which).
        Returns (exit status, transcript).
        """
        queues = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in answers.items()}
        # Not --batch: card-edit refuses "generate" in batch mode; --no-tty + --command-fd keep it scripted.
        argv = ["gpg", "--no-tty", "--command-fd", "0", "--status-fd", "2", *args]
        p = subprocess.Popen(argv, env=self.env, cwd=self.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, bufsize=1)
        transcript: list[str] = []
        deadline = time.monotonic() + timeout
        problem = None
        buffers = {p.stdout: "", p.stderr: ""}
        open_streams = [p.stdout, p.stderr]
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"timed out after {timeout} s"
                p.kill()
                break
            ready, _, _ = select.select(open_streams, [], [], min(left, 1.0))
            for stream in ready:
                chunk = os.read(stream.fileno(), 65536).decode(errors="replace")
                if not chunk:
                    open_streams.remove(stream)
                    continue
                buffers[stream] += chunk
                while "\n" in buffers[stream]:
                    line, buffers[stream] = buffers[stream].split("\n", 1)
                    transcript.append(line)
                    m = re.match(r"\[GNUPG:\] (GET_LINE|GET_BOOL|GET_HIDDEN) (\S+)", line)
                    if not m:
                        continue
                    keyword = m.group(2)
                    if keyword not in queues:
                        problem = f"unexpected prompt {keyword}"
                        answer = None
                    else:
                        q = queues[keyword]
                        if isinstance(q, list):
                            answer = q.pop(0) if q else None
                            if answer is None:
                                problem = f"no answer left for {keyword}"
                        else:
                            answer = q
                    if answer is None:
                        p.stdin.close()
                        open_streams = []
                        p.kill()
                        break
                    transcript.append(f">>> {answer if keyword != 'passphrase.enter' else '(hidden)'}")
                    p.stdin.write(str(answer) + "\n")
                    p.stdin.flush()
        rc = p.wait()
        text = "\n".join(transcript)
        if problem or (check and rc != 0):
            raise GpgError(f"gpg {' '.join(args)}: {problem or f'exit {rc}'}\n{text}\n{self.scd_log_tail()}")
        return rc, text

    def card_edit(self, commands: Sequence[str], extra: dict[str, object] | None = None, **kw) -> tuple[int, str]:
        """``gpg --card-edit`` running ``commands`` at the card prompt, then quit."""
        answers: dict[str, object] = {"cardedit.prompt": [*commands, "quit"]}
        answers.update(extra or {})
        return self.edit(["--card-edit"], answers, **kw)

    # -- keys --------------------------------------------------------------------------------
    def fingerprints(self, secret: bool = False) -> list[str]:
        """Fingerprints of the primary keys (the fpr record right after each pub/sec record)."""
        out = self.gpg("--with-colons", "--list-secret-keys" if secret else "--list-keys", check=False).stdout
        lines = out.splitlines()
        return [lines[i + 1].split(":")[9] for i, line in enumerate(lines[:-1])
                if line.split(":")[0] in ("pub", "sec") and lines[i + 1].startswith("fpr:")]

    def card_key_fingerprints(self) -> dict[str, str]:
        """{sig, enc, aut: fingerprint or ''} from --card-status --with-colons."""
        fpr = self.card_info().get("fpr", ["", "", ""])
        return dict(zip(("sig", "enc", "aut"), (f.upper() for f in fpr[:3])))

    def generate_on_card(self, name: str = "Card User", email: str = "card@example.org", *,
                         replace: bool = False) -> str:
        """``--card-edit`` generate (no off-card backup); returns the new primary fingerprint."""
        extra = {"cardedit.genkeys.backup_enc": "n", "keygen.valid": "0", "keygen.name": name,
                 "keygen.email": email, "keygen.comment": "", "cardedit.genkeys.replace_keys": "y"}
        self.card_edit(["admin", "generate"], extra)
        return self.card_key_fingerprints()["sig"]

    def key_attr(self, sig: str, enc: str, aut: str) -> str:
        """``key-attr``: each of "rsa2048"/"rsa3072"/"rsa4096", or an ECC curve name
        ("ed25519"/"cv25519" for the 25519 family, "nistp256"...)."""
        menu = []
        sizes = []
        curves = []
        for which, attr in (("sig", sig), ("enc", enc), ("aut", aut)):
            if attr.startswith("rsa"):
                menu.append("1")
                sizes.append(attr[3:])
            else:
                menu.append("2")
                curves.append(_curve_menu(attr))
        extra = {"cardedit.genkeys.algo": menu, "cardedit.genkeys.size": sizes, "keygen.curve": curves}
        answers = {"cardedit.prompt": ["admin", "key-attr", "quit"], **{k: v for k, v in extra.items() if v}}
        _, text = self.edit(["--expert", "--card-edit"], answers)
        return text

    def stop(self) -> None:
        self.kill()


#: GnuPG 2.2's ECC menu (g10/keygen.c ask_curve) takes a curve's name; most are offered in
#: --expert mode only, which key_attr() uses.
_CURVES_MENU = {"ed25519": "Curve25519", "cv25519": "Curve25519", "nistp256": "NIST P-256",
                "nistp384": "NIST P-384", "nistp521": "NIST P-521", "brainpoolp256r1": "brainpoolP256r1",
                "brainpoolp384r1": "brainpoolP384r1", "brainpoolp512r1": "brainpoolP512r1",
                "secp256k1": "secp256k1"}


def _curve_menu(name: str) -> str:
    return _CURVES_MENU[name.lower()]


def which(tool: str) -> str | None:
    return shutil.which(tool)
