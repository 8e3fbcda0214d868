"""Encrypted config values: ``{enc:v1:<key id>:<base64>}``, AES-256-GCM.

Theory of operation
-------------------

A secret in a config file (a JWT secret, a Redis password ...) may be written
as an encrypted value instead of a literal::

    password = "{enc:v1:k2026:bG9uZyBiYXNlNjQgb2Ygbm9uY2UgKyBjaXBoZXJ0ZXh0ICsgdGFn}"

The base64 (standard alphabet, padded) holds a 12-byte random nonce followed
by the AES-256-GCM ciphertext and its 16-byte tag (``cryptography``'s
``AESGCM``; nothing here is a cipher of our own).  The **associated data** is
the value's canonical field path (below), UTF-8, so a value encrypted for
``consumers[0].jwt_secrets[0].secret`` does not decrypt anywhere else: moving
it to another field, or the field to another position, is a config error.

Canonical path: the keys and indexes from the top of the document to the
value; an index is ``[n]``; a key of letters, digits, ``_`` and ``-`` is
``.key`` (no dot before the first one); any other key is ``["..."]`` with the
key as a JSON string.  So ``services[0].plugins[1].config.redis.password``,
``services[0].routes[0].headers["x.y"][0]``.  It is the path of the raw
document (TOML tables, or the dict given to ``load_config``), the same form
as the paths of config errors.

Keys: a keyring of ``id:base64(32 bytes)`` entries from ``GATEKEEP_SECRET_KEYS``
(comma-separated) and/or ``GATEKEEP_SECRET_KEY_FILE`` (one entry per line,
``#`` comments); every key decrypts the values that name its id, and the
**last** entry (the environment's after the file's) is the newest, the one
``encrypt`` and ``rotate`` use.  Key ids are 1-64 of ``A-Z a-z 0-9 _ . -``.

Decryption runs once, on the raw document, before it is structured
(``decrypt_values``), so every field of every table may hold one, plugin
configs and consumer credentials included.  The plaintext becomes a
``Secret``: a ``str`` whose ``repr`` is ``'<secret>'``, so a config object's
repr, an error message quoting a value (``{value!r}``) or a log line of a
repr never shows it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEYS_ENV",
    "KEY_FILE_ENV",
    "Keyring",
    "Secret",
    "SecretError",
    "SecretKey",
    "canonical_path",
    "decrypt",
    "decrypt_values",
    "encrypt",
    "encrypted_values",
    "is_encrypted",
    "key_id_of",
    "new_key",
    "parse_path",
]

KEYS_ENV: Final = "GATEKEEP_SECRET_KEYS"
KEY_FILE_ENV: Final = "GATEKEEP_SECRET_KEY_FILE"

_PREFIX: Final = "{enc:"
_TOKEN: Final = re.compile(r"\{enc:v1:([A-Za-z0-9_.-]{1,64}):([A-Za-z0-9+/]+={0,2})\}")
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_NONCE: Final = 12
_TAG: Final = 16


class SecretError(ValueError):
    """A key, a keyring or an encrypted value that cannot be used.

    The message never holds key material or a plaintext.
    """


class Secret(str):
    """A decrypted config value: a ``str`` that does not show itself in a ``repr``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


@attrs.frozen
class SecretKey:
    """One AES-256 key of a keyring and its id."""

    id: str
    key: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.id):
            raise SecretError(f"key id {self.id!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if len(self.key) != 32:
            raise SecretError(f"key {self.id!r} must be 32 bytes (AES-256), got {len(self.key)}")


def new_key(key_id: str) -> SecretKey:
    """A new random key (``os.urandom`` through ``secrets``)."""
    return SecretKey(key_id, secrets.token_bytes(32))


def _entry(text: str, where: str) -> SecretKey:
    key_id, sep, encoded = text.strip().partition(":")
    if not sep:
        raise SecretError(f"{where}: expected 'id:base64key'")
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"{where}: the key of {key_id!r} is not valid base64") from None
    return SecretKey(key_id.strip(), raw)


@attrs.frozen
class Keyring:
    """The keys values may be encrypted with; the last one is the newest."""

    keys: tuple[SecretKey, ...] = ()

    def __attrs_post_init__(self) -> None:
        seen: dict[str, bytes] = {}
        for k in self.keys:
            if seen.get(k.id, k.key) != k.key:
                raise SecretError(f"key id {k.id!r} is given twice with different keys")
            seen[k.id] = k.key

    @classmethod
    def parse(cls, text: str, source: str) -> Keyring:
        """Entries ``id:base64key`` separated by commas or new lines; ``#`` starts a comment."""
        keys: list[SecretKey] = []
        for n, line in enumerate(text.splitlines(), 1):
            where = f"{source}, line {n}" if "\n" in text else source
            keys.extend(_entry(item, where) for item in line.split("#", 1)[0].split(",") if item.strip())
        return cls(tuple(keys))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, key_file: str | None = None) -> Keyring:
        """The keys of ``GATEKEEP_SECRET_KEY_FILE`` (or ``key_file``), then of ``GATEKEEP_SECRET_KEYS``.

        Raises:
            SecretError: a key file that cannot be read, or a malformed entry.
        """
        env = os.environ if environ is None else environ
        keys: list[SecretKey] = []
        file = key_file or env.get(KEY_FILE_ENV)
        if file:
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8"
                raise SecretError(f"cannot read the secret key file {file!r}: {reason}") from None
            keys += cls.parse(text, f"key file {file!r}").keys
        if env.get(KEYS_ENV):
            keys += cls.parse(env[KEYS_ENV], KEYS_ENV).keys
        return cls(tuple(keys))

    @property
    def newest(self) -> SecretKey:
        if not self.keys:
            raise SecretError(f"no secret keys: set {KEYS_ENV} or {KEY_FILE_ENV}")
        return self.keys[-1]

    def get(self, key_id: str) -> SecretKey | None:
        for k in self.keys:
            if k.id == key_id:
                return k
        return None

    def __len__(self) -> int:
        return len(self.keys)

    def encrypt(self, plaintext: str, path: str, key_id: str | None = None) -> str:
        """``encrypt(plaintext, path, self, key_id)``: the ``{enc:v1:...}`` value for ``path``."""
        return encrypt(plaintext, path, self, key_id)

    def decrypt(self, value: str, path: str) -> Secret:
        """``decrypt(value, path, self)``: the plaintext of an encrypted value found at ``path``."""
        return decrypt(value, path, self)


def _aad(path: str) -> bytes:
    return path.encode("utf-8")


def encrypt(plaintext: str, path: str, keyring: Keyring, key_id: str | None = None) -> str:
    """The ``{enc:v1:...}`` value of ``plaintext`` for the field at ``path``.

    ``path`` is parsed and written in its canonical form (``services[0]["url"]``
    is ``services[0].url``) before it is bound to the value.

    Raises:
        SecretError: no keys, no key ``key_id``, or ``path`` is not a path.
    """
    key = keyring.newest if key_id is None else keyring.get(key_id)
    if key is None:
        raise SecretError(f"no key with id {key_id!r}")
    where = canonical_path(parse_path(path))
    nonce = secrets.token_bytes(_NONCE)
    sealed = AESGCM(key.key).encrypt(nonce, plaintext.encode("utf-8"), _aad(where))
    return f"{{enc:v1:{key.id}:{base64.b64encode(nonce + sealed).decode('ascii')}}}"


def is_encrypted(value: object) -> bool:
    """Whether ``value`` claims to be an encrypted value (well-formed or not)."""
    return isinstance(value, str) and value.startswith(_PREFIX) and value.endswith("}")


def key_id_of(value: str) -> str | None:
    match = _TOKEN.fullmatch(value)
    return match.group(1) if match else None


def decrypt(value: str, path: str, keyring: Keyring) -> Secret:
    """The plaintext of an encrypted value found at ``path``.

    Raises:
        SecretError: malformed, unknown key id, or not authentic (wrong key,
            tampered, or encrypted for another field).
    """
    match = _TOKEN.fullmatch(value)
    if match is None:
        raise SecretError("malformed encrypted value (expected '{enc:v1:<key id>:<base64>}')")
    key_id, encoded = match.groups()
    if not keyring.keys:
        raise SecretError(f"an encrypted value, but no secret keys: set {KEYS_ENV} or {KEY_FILE_ENV}")
    key = keyring.get(key_id)
    if key is None:
        known = ", ".join(k.id for k in keyring.keys)
        raise SecretError(f"encrypted with key id {key_id!r}, which is not among the secret keys ({known})")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("malformed encrypted value (bad base64)") from None
    if len(raw) < _NONCE + _TAG:
        raise SecretError("malformed encrypted value (too short)")
    try:
        plain = AESGCM(key.key).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(path))
    except InvalidTag:
        raise SecretError(
            f"cannot decrypt with key {key_id!r}: a wrong key, a changed value, "
            "or a value encrypted for another field"
        ) from None
    try:
        return Secret(plain.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretError("the decrypted value is not UTF-8 text") from None


# -- paths -----------------------------------------------------------------------------------


def _segment(key: str | int, first: bool) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if _BARE_KEY.fullmatch(key):
        return key if first else "." + key
    return "[" + json.dumps(key) + "]"


def canonical_path(parts: Sequence[str | int]) -> str:
    """The canonical text of a field path (see the module's docstring)."""
    return "".join(_segment(p, i == 0) for i, p in enumerate(parts))


_PATH_TOKEN = re.compile(r'\.?([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def parse_path(text: str) -> tuple[str | int, ...]:
    """The keys and indexes of a path such as ``services[0].plugins[1].config.password``.

    Raises:
        SecretError: not a path.
    """
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        match = _PATH_TOKEN.match(text, pos)
        dotted = match is not None and match.group(0).startswith(".")
        if match is None or (match.group(1) is not None and dotted != (pos > 0)):
            raise SecretError(f"not a config path at character {pos + 1}: {text!r}")
        bare, index, quoted = match.groups()
        if bare is not None:
            parts.append(bare)
        elif index is not None:
            parts.append(int(index))
        else:
            parts.append(json.loads(quoted))
        pos = match.end()
    if not parts:
        raise SecretError("an empty config path")
    return tuple(parts)


# -- documents -------------------------------------------------------------------------------


def encrypted_values(data: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str, str]]:
    """``(canonical path, value)`` of every string of ``data`` that claims to be encrypted."""
    if isinstance(data, str):
        if is_encrypted(data):
            yield canonical_path(path), data
    elif isinstance(data, Mapping):
        for k, v in data.items():
            yield from encrypted_values(v, (*path, str(k)))
    elif isinstance(data, list | tuple):
        for i, v in enumerate(data):
            yield from encrypted_values(v, (*path, i))


class _Lazy:
    """The keyring, read from the environment when the first encrypted value needs it."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self.error: SecretError | None = None

    def get(self) -> Keyring:
        if self.keyring is None and self.error is None:
            try:
                self.keyring = Keyring.from_environ()
            except SecretError as exc:
                self.error = exc
        if self.error is not None:
            raise self.error
        assert self.keyring is not None
        return self.keyring


def decrypt_values(data: Any, errors: Any, keyring: Keyring | None = None) -> Any:
    """``data`` with every encrypted string replaced by its ``Secret`` plaintext.

    Containers are copied only where something was decrypted.  Each value that
    cannot be decrypted adds an error at its path (``errors.add(path, message)``)
    and stays as it was.  The keyring is read from the environment only if a
    value needs it.
    """
    return _walk(data, (), errors, _Lazy(keyring))


def _walk(data: Any, path: tuple[str | int, ...], errors: Any, keys: _Lazy) -> Any:
    if isinstance(data, str):
        if not is_encrypted(data):
            return data
        where = canonical_path(path)
        try:
            return decrypt(data, where, keys.get())
        except SecretError as exc:
            errors.add(where, str(exc))
            return data
    if isinstance(data, Mapping):
        out = {k: _walk(v, (*path, str(k)), errors, keys) for k, v in data.items()}
        return out if any(out[k] is not v for k, v in data.items()) else data
    if isinstance(data, list | tuple):
        items = [_walk(v, (*path, i), errors, keys) for i, v in enumerate(data)]
        return type(data)(items) if any(a is not b for a, b in zip(items, data, strict=True)) else data
    return data
