"""The encryption envelope of an image (``--encrypt KEYFILE``), for images that leave the host.

An encrypted image is the plain image (docs/image-format.md) sealed in chunks with
AES-256-GCM (the ``cryptography`` package)::

    offset 0     envelope header, HEADER_SIZE (32) bytes, in the clear:
                   magic "LXCCRENC", version u16, alg u8 (1 = AES-256-GCM),
                   chunk_shift u8 (plain chunk = 1 << chunk_shift bytes, 1 MiB),
                   key_id 8 bytes (sha256 of the key, first 8 bytes),
                   nonce_prefix 7 bytes (random, new for every image), 5 zero bytes
    32           chunk 0: AES-GCM(plain chunk 0) and its 16-byte tag
                 chunk 1 ...
                 last chunk: the rest of the plain image (0 .. chunk size bytes) + tag

Every chunk is sealed with the nonce ``nonce_prefix || counter (u32, big endian) || final``
(final = 1 for the last chunk only) and the whole envelope header as associated data.  So a
flipped bit anywhere, a chunk moved or swapped (counter), a file cut at any point (the last
chunk left is not sealed as final, or is short) and an edited header all fail
authentication; a wrong key is named by its key id before anything is decrypted.

The envelope is written and read front to back in chunks, so an encrypted image can be
streamed (``ssh host cat IMAGE > IMAGE``); the reader also decrypts any chunk on its own
(random access, ``EncryptedSource.pread``), so nothing plain is ever written to disk on
the reading side.  The writing side keeps the plain image only in an unlinked file (no
name: it disappears with the writer, even when the writer is killed).

Key file: 32 raw bytes, or 64 hex digits, or base64 of 32 bytes (trailing newline
allowed); it must not be accessible by group or other (``chmod 600``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat

import construct as cs

from lxc_cr.errors import BadInput, ImageError, OperationFailed
from lxc_cr.image import format as F

MAGIC = F.ENVELOPE_MAGIC
VERSION = 1
HEADER_SIZE = 32
TAG_SIZE = 16
KEY_SIZE = 32
DEFAULT_CHUNK_SHIFT = 20
ALGS = {"aes_256_gcm": 1}

Header = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int16ul,
    "alg" / cs.Enum(cs.Int8ul, **ALGS),
    "chunk_shift" / cs.Int8ul,          # 12 .. 26
    "key_id" / cs.Bytes(8),             # sha256(key)[:8]
    "nonce_prefix" / cs.Bytes(7),
    "reserved" / cs.Const(b"\0" * 5),
)
assert Header.sizeof() == HEADER_SIZE


def _aead(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as e:
        raise OperationFailed(f"encryption needs the 'cryptography' package: {e}") from None
    return AESGCM(key)


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:8]


def load_key(path: str) -> bytes:
    """The 32-byte key in PATH; refuses a file group or other may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise BadInput(f"{path}: cannot open key file: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{path}: key file is not a regular file", path=path)
        if st.st_mode & 0o077:
            raise BadInput(f"{path}: key file is accessible by group or other (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it", path=path)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    try:
        if len(text) == 2 * KEY_SIZE:
            return binascii.unhexlify(text)
        key = base64.b64decode(text, validate=True)
        if len(key) == KEY_SIZE:
            return key
    except (binascii.Error, ValueError):
        pass
    raise BadInput(f"{path}: a key file holds 32 bytes: raw, 64 hex digits or base64 "
                   f"(this one has {len(data)} bytes)", path=path)


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\1" if final else b"\0")


# --- writing --------------------------------------------------------------------------------

def seal(src_fd: int, length: int, dst_fd: int, key: bytes,
         chunk_shift: int = DEFAULT_CHUNK_SHIFT) -> int:
    """Encrypt ``length`` bytes of src_fd (from offset 0) into dst_fd (from offset 0),
    front to back.  Returns the number of bytes written."""
    aead = _aead(key)
    prefix = os.urandom(7)
    hdr = Header.build({"version": VERSION, "alg": "aes_256_gcm", "chunk_shift": chunk_shift,
                        "key_id": key_id(key), "nonce_prefix": prefix})
    chunk = 1 << chunk_shift
    count = max(1, -(-length // chunk))
    out = 0
    _write_all(dst_fd, hdr, 0)
    out += len(hdr)
    for i in range(count):
        plain = _pread_all(src_fd, min(chunk, length - i * chunk), i * chunk)
        sealed = aead.encrypt(_nonce(prefix, i, i == count - 1), plain, hdr)
        _write_all(dst_fd, sealed, out)
        out += len(sealed)
    return out


def _pread_all(fd: int, n: int, off: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = os.pread(fd, n - got, off + got)
        if not b:
            raise OSError(5, "short read of the plain image")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _write_all(fd: int, data: bytes, off: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


# --- reading --------------------------------------------------------------------------------

class EncryptedSource:
    """Random-access reads of the plain image inside an envelope; each chunk is
    authenticated before a byte of it is handed out.  ``size`` is the plain size."""

    def __init__(self, fd: int, key: bytes, path: str):
        self.fd, self.path = fd, path
        fsize = os.fstat(fd).st_size
        raw = os.pread(fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            raise ImageError(path, "encrypted image: truncated envelope header", 0)
        try:
            h = Header.parse(raw)
        except cs.ConstructError:
            raise ImageError(path, "encrypted image: bad envelope header", 0) from None
        if h.version != VERSION:
            raise ImageError(path, f"encrypted image: envelope version {h.version} is not "
                             f"supported (only {VERSION})", 8)
        if not 12 <= h.chunk_shift <= 26:
            raise ImageError(path, f"encrypted image: bad chunk size 2^{h.chunk_shift}", 11)
        if h.key_id != key_id(key):
            raise ImageError(path, f"wrong key: the image was encrypted with key id "
                             f"{h.key_id.hex()}, the key file has key id {key_id(key).hex()}", 12)
        self.header = raw
        self.prefix = h.nonce_prefix
        self.chunk = 1 << h.chunk_shift
        self.aead = _aead(key)
        body = fsize - HEADER_SIZE
        sealed = self.chunk + TAG_SIZE
        self.count = max(1, -(-body // sealed))
        last = body - (self.count - 1) * sealed
        if last < TAG_SIZE:
            raise ImageError(path, f"encrypted image truncated or corrupt: {fsize} bytes "
                             f"cannot hold whole sealed chunks", fsize)
        self.size = body - self.count * TAG_SIZE
        self._cache: dict[int, bytes] = {}

    def _chunk(self, i: int) -> bytes:
        data = self._cache.get(i)
        if data is not None:
            return data
        data = self._open_chunk(i)
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[i] = data
        return data

    def _open_chunk(self, i: int) -> bytes:
        from cryptography.exceptions import InvalidTag
        sealed = self.chunk + TAG_SIZE
        off = HEADER_SIZE + i * sealed
        n = min(sealed, HEADER_SIZE + self.size + self.count * TAG_SIZE - off)
        raw = _pread_all(self.fd, n, off)
        try:
            data = self.aead.decrypt(_nonce(self.prefix, i, i == self.count - 1), raw,
                                     self.header)
        except InvalidTag:
            raise ImageError(self.path, f"encrypted chunk {i} of {self.count} fails "
                             f"authentication (truncated, reordered or tampered image)",
                             off) from None
        return data

    def authenticate(self) -> None:
        """Decrypt and authenticate every chunk once, front to back (nothing is kept)."""
        for i in range(self.count):
            if i not in self._cache:
                self._open_chunk(i)

    def pread(self, length: int, offset: int) -> bytes:
        out = []
        while length > 0:
            i, within = divmod(offset, self.chunk)
            part = self._chunk(i)[within:within + length]
            if not part:
                break
            out.append(part)
            offset += len(part)
            length -= len(part)
        return b"".join(out)
