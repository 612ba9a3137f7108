"""Independent AES-XTS-plain64 oracle for imgpipe's XTS tests (pyca/cryptography, OpenSSL).

usage: xts_cryptography.py encrypt|decrypt KEY_HEX SECTOR_SIZE FIRST_SECTOR IN OUT

Each sector of SECTOR_SIZE bytes is one XTS data unit; the 16-byte tweak of sector n is n as a
little-endian integer (plain64), n counting from FIRST_SECTOR.
"""
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def main() -> None:
    op, key_hex, sector_size, first, src, dst = sys.argv[1:7]
    key = bytes.fromhex(key_hex)
    sector_size, sector = int(sector_size), int(first)
    data = open(src, "rb").read()
    if len(data) % sector_size:
        sys.exit(f"input length {len(data)} is not a multiple of {sector_size}")
    out = bytearray()
    for off in range(0, len(data), sector_size):
        tweak = (sector % (1 << 64)).to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak))
        ctx = c.encryptor() if op == "encrypt" else c.decryptor()
        out += ctx.update(data[off:off + sector_size]) + ctx.finalize()
        sector += 1
    open(dst, "wb").write(out)


if __name__ == "__main__":
    main()
