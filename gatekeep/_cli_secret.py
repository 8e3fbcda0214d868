"""``gatekeep secret keygen | encrypt | rotate``: make and rotate ``{enc:...}`` config values.

``keygen`` prints a new key entry (``id:base64key``) for the key file or
``GATEKEEP_SECRET_KEYS``.  ``encrypt --path PATH`` reads a value from standard
input (never from the command line, where other users' ``ps`` and the shell
history would see it) and prints its encrypted form for that field.
``hash-password`` prints the scrypt hash of a password read from standard
input, for ``basic-auth`` credentials.  ``rotate CONFIG`` re-encrypts every
encrypted value of a config file (TOML, JSON or YAML) under the newest key and replaces the file
atomically; every other byte of the file stays as it was.  See docs/secrets.md.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

from ._config_files import Format, format_of, parse_config_bytes
from ._errors import ConfigError
from ._secrets import (
    KEY_FILE_ENV,
    KEYS_ENV,
    Keyring,
    SecretError,
    decrypt,
    encrypt,
    encrypted_values,
    key_id_of,
    new_key,
)
from .auth._passwords import hash_password

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``secret`` and its subcommands to the ``gatekeep`` parser."""
    secret = sub.add_parser("secret", help="encrypted config values: keygen, encrypt, rotate")
    commands = secret.add_subparsers(dest="secret_command", required=True)
    key_help = f"key file (default: ${KEY_FILE_ENV}); ${KEYS_ENV} adds keys"

    keygen = commands.add_parser("keygen", help="print a new AES-256 key entry 'id:base64key'")
    keygen.add_argument("--id", help="the key id (default: k<UTC date and time>)")

    enc = commands.add_parser("encrypt", help="encrypt a value read from stdin for one config field")
    enc.add_argument(
        "--path", required=True, help="the field's path, e.g. consumers[0].jwt_secrets[0].secret"
    )
    enc.add_argument("--key-id", help="the key to use (default: the newest)")
    enc.add_argument("--key-file", help=key_help)

    commands.add_parser(
        "hash-password", help="print the scrypt hash of a password read from stdin (basic-auth)"
    )

    rotate = commands.add_parser("rotate", help="re-encrypt every value of a config under the newest key")
    rotate.add_argument("config", help="config file: TOML, JSON or YAML (rewritten in place, atomically)")
    rotate.add_argument("--key-file", help=key_help)


def run(args: argparse.Namespace) -> int:
    try:
        if args.secret_command == "keygen":
            return _keygen(args.id)
        if args.secret_command == "hash-password":
            return _hash_password()
        keyring = Keyring.from_environ(key_file=args.key_file)
        if args.secret_command == "encrypt":
            return _encrypt(keyring, args.path, args.key_id)
        return _rotate(keyring, Path(args.config))
    except SecretError as exc:
        print(f"gatekeep secret: {exc}", file=sys.stderr)
        return 1


def _keygen(key_id: str | None) -> int:
    key = new_key(key_id or time.strftime("k%Y%m%dT%H%M%SZ", time.gmtime()))
    print(f"{key.id}:{base64.b64encode(key.key).decode('ascii')}")
    return 0


def _read_value() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("value (not echoed): ")
    value = sys.stdin.read()
    # One final line break is the shell's (echo, a here-string), not the secret's.
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def _hash_password() -> int:
    value = _read_value()
    if not value:
        raise SecretError("nothing to hash on standard input")
    print(hash_password(value))
    return 0


def _encrypt(keyring: Keyring, path: str, key_id: str | None) -> int:
    value = _read_value()
    if not value:
        raise SecretError("nothing to encrypt on standard input")
    print(encrypt(value, path, keyring, key_id))
    return 0


def _rotate(keyring: Keyring, path: Path) -> int:
    try:
        original = path.read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    fmt = format_of(path.name)
    try:
        doc = parse_config_bytes(original, fmt, str(path))
    except ConfigError as exc:
        raise SecretError("; ".join(e.message for e in exc.errors)) from None
    text = original.decode("utf-8")
    newest = keyring.newest
    failures: list[str] = []
    replacements: dict[str, str] = {}
    for where, value in encrypted_values(doc):
        try:
            plaintext = decrypt(value, where, keyring)
        except SecretError as exc:
            failures.append(f"  {where}: {exc}")
            continue
        if key_id_of(value) == newest.id:
            continue
        if value not in text:  # written with escapes (JSON's "\/"): not a text to replace
            failures.append(f"  {where}: not found as written in the file (escaped?)")
            continue
        replacements[value] = encrypt(plaintext, where, keyring, newest.id)
    if failures:
        print(f"{path}: {len(failures)} value(s) cannot be re-encrypted; nothing changed", file=sys.stderr)
        print("\n".join(failures), file=sys.stderr)
        return 1
    if not replacements:
        print(f"{path}: every encrypted value already uses key {newest.id!r}")
        return 0
    for old, new in replacements.items():
        # Each value is unique (a random nonce); its characters need no escaping in TOML or YAML.
        text = text.replace(old, new)
    _check_rewrite(text, fmt, doc, keyring)
    _write_atomically(path, text.encode("utf-8"))
    print(f"{path}: {len(replacements)} value(s) re-encrypted with key {newest.id!r}")
    return 0


def _check_rewrite(text: str, fmt: Format, before: dict[str, object], keyring: Keyring) -> None:
    """The rewritten document decrypts to the same values at the same places."""
    after = parse_config_bytes(text.encode("utf-8"), fmt, "the rewritten config")
    old = {where: decrypt(value, where, keyring) for where, value in encrypted_values(before)}
    new = {where: decrypt(value, where, keyring) for where, value in encrypted_values(after)}
    if old != new:  # pragma: no cover - a bug, not an input
        raise SecretError("the rewritten config would differ; nothing changed")


def _write_atomically(path: Path, data: bytes) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
