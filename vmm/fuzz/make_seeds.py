#!/usr/bin/env python3
"""Writes the seed corpus (corpus/<target>/seed-*): small guests with
well-formed chains, so fuzzing starts past the first checks. See
vmm/src/fuzzing.rs for the input layout."""
import struct, os

BASE = 0x1000
SPAN = 0x4000
NEXT, WRITE = 1, 2

class Guest:
    def __init__(self, log2size):
        self.size = 1 << log2size
        self.first = log2size
        self.mem = bytearray(0x10000)
    def put(self, addr, data):
        o = addr - BASE
        self.mem[o:o + len(data)] = data
    def desc(self, q, i, addr, length, flags, nxt):
        self.put(BASE + q * SPAN + 16 * i, struct.pack('<QIHH', addr, length, flags, nxt))
    def avail(self, q, heads):
        a = BASE + q * SPAN + 0x2000
        self.put(a, struct.pack('<HH', 0, len(heads)))
        for k, h in enumerate(heads):
            self.put(a + 4 + 2 * k, struct.pack('<H', h))
    def bytes(self, tail=b''):
        data = bytes([self.first]) + bytes(self.mem)
        return data.rstrip(b'\0') + tail

def write(target, name, data):
    os.makedirs(f'corpus/{target}', exist_ok=True)
    with open(f'corpus/{target}/seed-{name}', 'wb') as f:
        f.write(data)

# queue: a readable and a writable descriptor.
g = Guest(3)
g.desc(0, 0, 0xd000, 16, NEXT, 1)
g.desc(0, 1, 0xd100, 32, WRITE, 0)
g.avail(0, [0])
write('queue', 'two-descriptors', g.bytes())

# block: IN, OUT, FLUSH, GET_ID.
g = Guest(4)
heads = []
for n, (kind, sector, dflags) in enumerate([(0, 1, WRITE), (1, 2, 0), (4, 0, None), (8, 0, WRITE)]):
    h = 3 * n
    hdr = 0xd000 + 0x40 * n
    g.put(hdr, struct.pack('<IIQ', kind, 0, sector))
    if dflags is None:
        g.desc(0, h, hdr, 16, NEXT, h + 2)
    else:
        g.desc(0, h, hdr, 16, NEXT, h + 1)
        g.desc(0, h + 1, 0xe000 + 0x200 * n, 512 if kind != 8 else 20, dflags | NEXT, h + 2)
    g.desc(0, h + 2, 0xd800 + n, 1, WRITE, 0)
    heads.append(h)
g.avail(0, heads)
write('block', 'in-out-flush-id', g.bytes())

# vsock: tx REQUEST to a host port nobody listens on, an RW on no
# connection, a CREDIT_REQUEST; rx buffers for the resets.
def vhdr(op, length=0, src_port=5000, dst_port=1234, flags=0):
    return struct.pack('<QQIIIHHIII', 3, 2, src_port, dst_port, length, 1, op, flags, 262144, 0)
g = Guest(3)
pkts = [vhdr(1), vhdr(5, 5) + b'hello', vhdr(7), vhdr(4, flags=3)]
for n, p in enumerate(pkts):
    g.put(0xd000 + 0x100 * n, p)
    g.desc(1, n, 0xd000 + 0x100 * n, len(p), 0, 0)
g.avail(1, list(range(len(pkts))))
for n in range(4):
    g.desc(0, n, 0xe000 + 0x400 * n, 44, WRITE | NEXT, n + 4)
    g.desc(0, n + 4, 0xe100 + 0x400 * n, 0x300, WRITE, 0)
g.avail(0, [0, 1, 2, 3])
write('vsock', 'request-rw-credit', g.bytes())

# net: one 60-byte frame out, one receive buffer, a frame in.
g = Guest(3)
frame = bytes(12) + bytes.fromhex('ffffffffffff020000000001') + b'\x08\x06' + bytes(46)
g.put(0xd000, frame)
g.desc(1, 0, 0xd000, 12, NEXT, 1)
g.desc(1, 1, 0xd00c, len(frame) - 12, 0, 0)
g.avail(1, [0])
g.desc(0, 0, 0xe000, 1526, WRITE, 0)
g.avail(0, [0])
write('net', 'one-frame-each-way', g.bytes(tail=b'\0' * 16 + frame))
