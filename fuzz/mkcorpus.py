#!/usr/bin/env python3
"""Write the hand-made seeds of fuzz/corpus/ (see README.md for the input
format: fuzz_api.c's byte reader). Each seed is a scripted scenario
followed by a fixed pseudo-random tail, so libFuzzer starts from inputs
that reach deep states."""
import os, random

MMAP, MUNMAP, MPROT, MADV, MREMAP, CPUW = 0, 2, 3, 4, 5, 6
UGET, UREL, MAPL, UUNMAP, TOKEN, REG, DEREG = 8, 9, 10, 12, 13, 14, 15
READ, WRITE, ATOMIC, PREF, COPY, POST, DRAIN, SNAP = 16, 17, 18, 19, 20, 21, 142, 23


def rng(off, ln):  # pick_range bytes: mode 2, offset/8 (le16), len-1 (le16)
    return [2, off & 255, off >> 8, (ln - 1) & 255, (ln - 1) >> 8]


base = [
    MMAP, 0, 3, 2, 1,                # pages 0-3 read-write, private
    REG, 0, 0, 6, 255, 1, 0,         # key slot 0: pages 0-3, all rights
    CPUW, 0, 3,                      # tagged words in pages 0-3
    READ, 0] + rng(10, 9000) + [     # device read across pages
    WRITE, 0] + rng(600, 5000) + [
    READ, 0] + rng(0, 16000) + [
    MUNMAP, 1, 0,                    # page 1 becomes a hole
    READ, 0] + rng(0, 9000) + [      # -EFAULT
    SNAP,
    MMAP, 1, 0, 1, 1,                # page 1 back, read-only
    WRITE, 0] + rng(512, 100) + [    # -EACCES
    READ, 0] + rng(512, 100) + [
    ATOMIC, 0] + rng(8, 8) + [0,
    POST, 0, 0] + rng(0, 5000) + [   # async read
    POST, 0, 1] + rng(1024, 3000) + [  # async write
    MPROT, 0, 0, 0,                  # page 0 PROT_NONE under requests
    DRAIN, SNAP,
    MPROT, 0, 0, 2,
    READ, 0] + rng(0, 16000) + [SNAP]

engine = [
    MMAP, 4, 3, 2, 1,                # pages 4-7
    UGET, 0, 4, 3, 2,                # region slot 0: pages 4-7, RW
    CPUW, 4, 3,
    MAPL, 0, 2, 0, 3,                # map_and_lock write pages 4-7
    TOKEN, 0, 5, 1,                  # start() on pages 5-6
    MAPL, 0, 0, 1, 0,                # -EBUSY at once (timeout 0)
    TOKEN, 0,                        # end()
    MAPL, 0, 0, 0, 3,
    MPROT, 6, 1, 1,                  # pages 6-7 read-only
    MAPL, 0, 1, 2, 1,                # write: -EACCES
    MADV, 4, 1,
    MREMAP, 4, 10, 1,                # pages 4-5 -> 10-11
    MAPL, 0, 0, 0, 3,                # -EFAULT
    UUNMAP, 0, UREL, 0]

def tail(seed, n=300):
    r = random.Random(seed)
    return [r.randrange(256) for _ in range(n)]

seeds = {
    'manual-device': [0x00, 0] + base,
    'manual-device-fastcopy-fa16': [0x24, 1] + base,
    'manual-engine': [0x00, 0] + engine + base,
    'manual-inject-alloc': [0x40, 7] + base + engine,
    'manual-pin': [0x80, 0] + engine + base,
    'monitor-both': [0x03, 0] + base + engine,
    'monitor-strict-fastcopy': [0x0f, 3] + base + engine,
    'monitor-fa64-inject': [0x73, 9] + engine + base,
}
d = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
os.makedirs(d, exist_ok=True)
for i, (name, body) in enumerate(sorted(seeds.items())):
    with open(os.path.join(d, name), 'wb') as f:
        f.write(bytes(b & 255 for b in body + tail(i)))
