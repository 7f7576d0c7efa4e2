"""The DMA monitor's rules on hand-made TLPs (cocotbext-pcie ``Tlp`` objects, no simulator).

Each test drives :class:`sim.dma_monitor.DmaMonitor` the way the bench does: the host's register writes and
reads and the completions of the device's reads go to ``host_tlp``, the device's requests and its completions
of register reads to ``device_tlp``.  A clean flow must stay clean, and each rule must fire on the TLP that
breaks it (the RTL-level counterparts, with gateware bugs planted, are in tests/test_rtl_dma_monitor.py).
"""

from __future__ import annotations

import pytest
from cocotbext.pcie.core.tlp import CplStatus, Tlp, TlpType

from sim.dma_monitor import RULES, DmaMonitor, StrayDma
from virtio_fpga import device_map, spec
from virtio_fpga.spec import DescFlag, Feature

BAR = 0xF000_0000
COMMON = device_map.COMMON_CFG_OFFSET
RING = {0: 0x1_0000, 1: 0x2_0000}
DRIVER = {0: 0x1_1000, 1: 0x2_1000}
DEVICE = {0: 0x1_2000, 1: 0x2_2000}
SIZE = 8
AVAIL = int(DescFlag.AVAIL)
USED = int(DescFlag.USED)


def field(name: str) -> int:
    return COMMON + spec.COMMON_CFG.offset_of(name)


class Rig:
    """A monitor plus the host memory of two rings, with helpers that make the TLPs."""

    def __init__(self, features: int = 0) -> None:
        self.time = 0.0
        self.mon = DmaMonitor(lambda a: a - BAR if BAR <= a < BAR + 0x10000 else None, now_ns=lambda: self.time)
        self.ring = {q: bytearray(SIZE * 16) for q in RING}
        self.tag = 0
        self.avail_idx = {0: 0, 1: 0}
        self.avail_wrap = {0: 1, 1: 1}
        self.reg_write(field("device_status"), 1, 0)
        self.reg_write(field("driver_feature_select"), 4, 0)
        self.reg_write(field("driver_feature"), 4, features & 0xFFFFFFFF)
        self.reg_write(field("driver_feature_select"), 4, 1)
        self.reg_write(field("driver_feature"), 4, features >> 32)
        for q in RING:
            self.enable(q)
        self.reg_write(field("device_status"), 1, 0x0F)

    def enable(self, q: int) -> None:
        self.reg_write(field("queue_select"), 2, q)
        self.reg_write(field("queue_size"), 2, SIZE)
        self.reg_write(field("queue_desc"), 8, RING[q])
        self.reg_write(field("queue_driver"), 8, DRIVER[q])
        self.reg_write(field("queue_device"), 8, DEVICE[q])
        self.reg_write(field("queue_enable"), 2, 1)

    # ---- host side
    def reg_write(self, off: int, size: int, value: int) -> None:
        t = Tlp()
        t.fmt_type = TlpType.MEM_WRITE_64
        t.set_addr_be_data(BAR + off, value.to_bytes(size, "little"))
        self.mon.host_tlp(t)

    def reg_read(self, off: int, size: int, value: int) -> None:
        """The host reads a register and the device answers ``value``."""
        self.tag = (self.tag + 1) & 0xFF
        req = Tlp()
        req.fmt_type = TlpType.MEM_READ_64
        req.set_addr_be(BAR + off, size)
        req.tag = self.tag
        self.mon.host_tlp(req)
        cpl = Tlp()
        cpl.fmt_type = TlpType.CPL_DATA
        cpl.tag = self.tag
        cpl.byte_count = size
        cpl.lower_address = (BAR + off) & 0x7F
        lead = off & 3
        cpl.set_data((bytes(lead) + value.to_bytes(size, "little") + bytes(4))[: (lead + size + 3) // 4 * 4])
        self.mon.device_tlp(cpl)

    def publish(self, q: int, bufs: list[tuple[int, int, int]], buf_id: int) -> None:
        """Write a chain into host memory as a driver would (flags available for the current lap)."""
        for k, (addr, length, extra) in enumerate(bufs):
            i = self.avail_idx[q]
            w = self.avail_wrap[q]
            flags = (AVAIL if w else USED) | extra | (int(DescFlag.NEXT) if k < len(bufs) - 1 else 0)
            self.ring[q][16 * i : 16 * i + 16] = spec.PACKED_DESC.pack(addr=addr, len=length, id=buf_id, flags=flags)
            self.avail_idx[q] = (i + 1) % SIZE
            if self.avail_idx[q] == 0:
                self.avail_wrap[q] ^= 1

    # ---- device side
    def dev_read(self, addr: int, n: int, *, answer: bytes | None = None) -> int:
        self.tag = (self.tag + 1) & 0xFF
        t = Tlp()
        t.fmt_type = TlpType.MEM_READ_64
        t.set_addr_be(addr, n)
        t.tag = self.tag
        self.mon.device_tlp(t)
        if answer is not None:  # the root complex answers with one completion
            cpl = Tlp()
            cpl.fmt_type = TlpType.CPL_DATA
            cpl.status = CplStatus.SC
            cpl.tag = self.tag
            cpl.byte_count = n
            cpl.lower_address = addr & 0x7F
            lead = addr & 3
            cpl.set_data((bytes(lead) + answer + bytes(4))[: (lead + n + 3) // 4 * 4])
            self.mon.host_tlp(cpl)
        return self.tag

    def fetch(self, q: int, first: int = 0, count: int = SIZE) -> None:
        """The device reads ring slots and is shown what host memory holds."""
        self.dev_read(RING[q] + 16 * first, 16 * count, answer=bytes(self.ring[q][16 * first : 16 * (first + count)]))

    def dev_write(self, addr: int, data: bytes) -> None:
        t = Tlp()
        t.fmt_type = TlpType.MEM_WRITE_64
        t.set_addr_be_data(addr, data)
        self.mon.device_tlp(t)

    def used(self, q: int, slot: int, buf_id: int, length: int, wrap: int = 1) -> None:
        flags = (AVAIL | USED) if wrap else 0
        if length:
            flags |= int(DescFlag.WRITE)
        word = length | buf_id << 32 | flags << 48
        self.dev_write(RING[q] + 16 * slot + 8, word.to_bytes(8, "little"))

    def rules(self) -> list[str]:
        return [v.rule for v in self.mon.violations]


def test_a_clean_exchange_stays_clean() -> None:
    r = Rig()
    r.publish(1, [(0x5000, 12, 0), (0x6000, 100, 0)], buf_id=3)  # TX: header + frame
    r.publish(0, [(0x7000, 1526, DescFlag.WRITE)], buf_id=5)  # RX
    r.fetch(1)
    r.fetch(0)
    r.dev_read(0x5000, 12)
    r.dev_read(0x6000, 100)
    r.used(1, 0, 3, 0)
    r.dev_read(DRIVER[1], 4)
    r.dev_write(DEVICE[1], bytes(4))
    r.dev_write(0x7000, bytes(112))
    r.used(0, 0, 5, 112)
    assert r.rules() == []
    assert r.mon.buffers_published == 2 and r.mon.used_elements == 2
    assert r.mon.tlps_checked == 9
    r.mon.check()


@pytest.mark.parametrize(
    ("action", "rule"),
    [
        (lambda r: r.dev_read(0x7000, 64), "read-of-writable"),
        (lambda r: r.dev_write(0x5000, bytes(4)), "write-to-readable"),
        (lambda r: r.dev_write(0x7000 + 1500, bytes(64)), "beyond-buffer"),
        (lambda r: r.dev_read(0x6000 + 64, 64), "beyond-buffer"),
        (lambda r: r.dev_read(0x9000, 4), "outside"),
        (lambda r: r.dev_write(DRIVER[0], bytes(4)), "driver-area-write"),
        (lambda r: r.dev_read(DEVICE[0], 4), "device-area-read"),
        (lambda r: r.dev_read(RING[0] + 16 * (SIZE - 1), 32), "ring-bounds"),
        (lambda r: r.used(0, 1, 5, 10), "used-slot"),
        (lambda r: r.used(0, 0, 9, 10), "used-element"),  # id 9 is not outstanding
        (lambda r: r.used(0, 0, 5, 2000), "used-element"),  # more than the writable bytes
        (lambda r: r.used(0, 0, 5, 10, wrap=0), "used-element"),  # wrong wrap bits
        (lambda r: r.dev_write(0x8000_0040, bytes(4)), "msix-address"),
    ],
)
def test_each_rule_fires_on_the_breaking_tlp(action, rule: str) -> None:
    assert rule in RULES
    r = Rig()
    r.publish(1, [(0x5000, 12, 0), (0x6000, 100, 0)], buf_id=3)
    r.publish(0, [(0x7000, 1526, DescFlag.WRITE)], buf_id=5)
    r.fetch(1)
    r.fetch(0)
    action(r)
    assert r.rules() == [rule], r.mon.violations
    v = r.mon.violations[0]
    assert v.tlp in ("MemRd", "MemWr") and v.length >= 0 and rule in str(v)
    with pytest.raises(StrayDma, match=rule):
        r.mon.check()
    assert issubclass(StrayDma, AssertionError)


def test_a_buffer_is_untouchable_once_used_and_before_it_is_shown() -> None:
    r = Rig()
    r.publish(0, [(0x7000, 256, DescFlag.WRITE)], buf_id=0)
    r.dev_write(0x7000, bytes(16))  # the device has not read the descriptor yet
    assert r.rules() == ["outside"]
    r.fetch(0)
    r.dev_write(0x7000, bytes(16))
    r.used(0, 0, 0, 16)
    r.dev_write(0x7000, bytes(16))
    assert r.rules() == ["outside", "not-outstanding"]


def test_descriptors_of_the_previous_lap_are_not_available() -> None:
    r = Rig()
    for k in range(SIZE):  # one whole lap: slots 0..7, ids 0..7
        r.publish(0, [(0x40000 + 0x1000 * k, 64, DescFlag.WRITE)], buf_id=k)
    r.fetch(0)
    for k in range(SIZE):
        r.dev_write(0x40000 + 0x1000 * k, bytes(8))
        r.used(0, k, k, 8, wrap=1)
    # the driver makes only slot 0 available again (wrap 0); slot 1 still holds the old lap's descriptor
    r.publish(0, [(0xA0000, 64, DescFlag.WRITE)], buf_id=0)
    r.fetch(0, 0, 2)
    r.dev_write(0xA0000, bytes(8))
    assert r.rules() == []
    r.dev_write(0x41000, bytes(8))  # slot 1's old buffer: returned, and not made available again
    assert r.rules() == ["not-outstanding"]
    r.used(0, 0, 0, 8, wrap=0)
    assert r.rules() == ["not-outstanding"]


def test_in_order_returns_every_buffer_up_to_the_id() -> None:
    r = Rig(features=1 << Feature.IN_ORDER)
    for k in range(3):
        r.publish(1, [(0x5000 + 0x1000 * k, 64, 0), (0x9000 + 0x1000 * k, 64, 0)], buf_id=k)
    r.fetch(1)
    r.used(1, 0, 2, 0)  # one used element for the batch of three chains (2.8.21.1)
    assert r.rules() == []
    r.dev_read(0x5000, 8)
    assert r.rules() == ["not-outstanding"]
    assert r.mon.queues[1].next_used == 6


def test_without_in_order_a_used_element_returns_only_its_buffer() -> None:
    r = Rig()
    for k in range(2):
        r.publish(1, [(0x5000 + 0x1000 * k, 64, 0)], buf_id=k)
    r.fetch(1)
    r.used(1, 0, 1, 0)
    r.dev_read(0x5000, 8)  # buffer 0 is still outstanding
    r.dev_read(0x6000, 8)
    assert r.rules() == ["not-outstanding"]


def test_no_dma_after_a_device_reset_read_back_0() -> None:
    r = Rig()
    r.publish(0, [(0x7000, 256, DescFlag.WRITE)], buf_id=0)
    r.fetch(0)
    r.reg_write(field("device_status"), 1, 0)
    r.dev_write(0x7000, bytes(16))  # still allowed: the reset has not read back 0
    r.reg_read(field("device_status"), 1, 0)
    r.dev_write(0x7000, bytes(16))
    r.dev_read(RING[0], 16)
    assert r.rules() == ["after-reset", "after-reset"]
    assert [kind for _, kind, _ in r.mon.resets] == ["device"]


def test_no_dma_of_a_queue_after_its_reset_read_back_0() -> None:
    r = Rig(features=1 << Feature.RING_RESET)
    r.publish(0, [(0x7000, 256, DescFlag.WRITE)], buf_id=0)
    r.publish(1, [(0x5000, 64, 0)], buf_id=0)
    r.fetch(0)
    r.fetch(1)
    r.reg_write(field("queue_select"), 2, 0)
    r.reg_write(field("queue_reset"), 2, 1)
    r.reg_read(field("queue_reset"), 2, 1)  # still running
    r.dev_write(0x7000, bytes(16))
    r.reg_read(field("queue_reset"), 2, 0)
    r.dev_write(0x7000, bytes(16))
    r.dev_read(0x5000, 64)  # the other queue is untouched
    assert r.rules() == ["after-queue-reset"]
    r.enable(0)  # re-enabled: a fresh ring, a fresh walk
    r.ring[0][:] = bytes(SIZE * 16)
    r.avail_idx[0], r.avail_wrap[0] = 0, 1
    r.publish(0, [(0x7000, 256, DescFlag.WRITE)], buf_id=0)
    r.fetch(0)
    r.dev_write(0x7000, bytes(16))
    assert r.rules() == ["after-queue-reset"]


def test_msix_only_to_programmed_entries() -> None:
    r = Rig()
    table = device_map.MSIX_TABLE_OFFSET
    r.reg_write(table + 16, 8, 0xFEE0_0000)
    r.reg_write(table + 16 + 8, 4, 0x41)
    r.dev_write(0xFEE0_0000, (0x41).to_bytes(4, "little"))
    assert r.rules() == [] and r.mon.msix_writes == 1
    r.dev_write(0xFEE0_0000, (0x42).to_bytes(4, "little"))  # wrong data: not that entry's message
    assert r.rules() == ["outside"]


def test_malformed_chains_give_nothing_beyond_the_rule() -> None:
    r = Rig()
    r.publish(1, [(0x5000, 64, 0), (0x6000, 64, DescFlag.INDIRECT), (0x7000, 64, 0)], buf_id=1)
    r.fetch(1)
    r.dev_read(0x5000, 64)  # the chain's first descriptor was fine: a pipelined device may have read it
    r.dev_read(0x6000, 16)  # the indirect table (never offered)
    r.dev_read(0x7000, 16)  # after the malformed descriptor
    assert r.rules() == ["malformed-chain", "outside"]


def test_a_chain_longer_than_the_queue_stops_the_walk() -> None:
    r = Rig()
    ring = r.ring[1]
    for i in range(SIZE):  # every slot chained with NEXT (sim/scenarios "malformed-chain_loop")
        flags = AVAIL | int(DescFlag.NEXT)
        ring[16 * i : 16 * i + 16] = spec.PACKED_DESC.pack(addr=0x5000 + 64 * i, len=16, id=0, flags=flags)
    r.fetch(1)
    r.dev_read(0x5000, 16)
    r.dev_read(0x5000 + 64 * (SIZE - 2), 16)
    assert r.rules() == []
    assert r.mon.queues[1].dead is not None
    r.dev_read(0x5000 + 64 * (SIZE - 1), 16)  # the descriptor that makes the chain longer than the queue
    assert r.rules() == ["malformed-chain"]


def test_split_completions_and_speculative_reads() -> None:
    r = Rig()
    r.publish(0, [(0x7000, 256, DescFlag.WRITE)], buf_id=0)
    # a read of all 8 slots, answered in two completions (as a 64-byte read completion boundary splits it)
    tag = r.dev_read(RING[0], 128)
    for part in range(2):
        cpl = Tlp()
        cpl.fmt_type = TlpType.CPL_DATA
        cpl.tag = tag
        cpl.byte_count = 128 - 64 * part
        cpl.lower_address = (RING[0] + 64 * part) & 0x7F
        cpl.set_data(bytes(r.ring[0][64 * part : 64 * part + 64]))
        r.mon.host_tlp(cpl)
    r.dev_write(0x7000, bytes(8))
    # slot 1 was shown unavailable; now the driver publishes it and the device reads it again
    r.publish(0, [(0x8000, 64, DescFlag.WRITE)], buf_id=1)
    r.dev_write(0x8000, bytes(8))
    assert r.rules() == ["outside"]
    r.fetch(0, 1, 1)
    r.dev_write(0x8000, bytes(8))
    assert r.rules() == ["outside"]
