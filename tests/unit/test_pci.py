"""Reading PCI devices and BARs from sysfs, live or captured."""

import importlib.util
import os

import pytest

from memtrace.errors import BadInput
from memtrace.probes.pci import parse_resource, read_pci_devices
from tests.conftest import FIXTURES

ZERO_LINE = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"


def devices_by_slot(capture):
    devices = read_pci_devices(os.path.join(FIXTURES, capture, "sys"))
    return {device.slot: device for device in devices}


def test_host_capture_devices_drivers_and_bars():
    devices = devices_by_slot("host-6.18")
    assert sorted(devices) == [f"0000:00:0{n}.0" for n in range(6)]
    host_bridge = devices["0000:00:00.0"]
    assert (host_bridge.pci_class, host_bridge.vendor_device) == (0x060000, "8086:0d57")
    assert host_bridge.driver is None
    assert host_bridge.bars == ()
    virtio = devices["0000:00:01.0"]
    assert virtio.driver == "virtio-pci"
    assert (virtio.subsystem_vendor, virtio.subsystem_device) == (0x1AF4, 0x1045)
    (bar0,) = virtio.bars
    assert (bar0.label, bar0.start, bar0.end) == ("BAR0", 0x40_0000_0000, 0x40_0008_0000)
    assert bar0.is_memory and not bar0.is_prefetchable and not bar0.has_wc_file
    assert not virtio.is_display


def test_bochs_framebuffer_bar_is_prefetchable_with_a_wc_file():
    bochs = devices_by_slot("handmade-6.1-bochs")["0000:00:02.0"]
    assert bochs.is_display and bochs.pci_class == 0x030000
    assert (bochs.vendor_device, bochs.driver) == ("1234:1111", "bochs-drm")
    bars = {bar.label: bar for bar in bochs.bars}
    assert sorted(bars) == ["BAR0", "BAR2", "ROM"]
    assert bars["BAR0"].is_prefetchable and bars["BAR0"].has_wc_file
    assert (bars["BAR0"].start, bars["BAR0"].size) == (0xFD000000, 16 << 20)
    assert bars["BAR2"].is_memory and not bars["BAR2"].is_prefetchable
    assert not bars["BAR2"].has_wc_file
    assert bars["ROM"].index == 6


def test_io_port_bar_is_not_memory():
    e1000 = devices_by_slot("handmade-6.1-bochs")["0000:00:03.0"]
    io_bar = [bar for bar in e1000.bars if bar.index == 1][0]
    assert io_bar.is_io and not io_bar.is_memory
    assert (io_bar.start, io_bar.end) == (0xC000, 0xC040)


def test_resource_lines_after_the_rom_are_ignored():
    sriov_lines = "0x00000000e0000000 0x00000000e00fffff 0x0000000000140204\n" * 6
    text = ZERO_LINE * 6 + "0x00000000000c0000 0x00000000000dffff 0x0000000000000212\n"
    assert parse_resource(text + sriov_lines) == [(6, 0xC0000, 0xE0000, 0x212)]


@pytest.mark.parametrize(
    "bad_line",
    ["0x00000000fd000000 0x00000000fdff", "garbage", "0x1 0x2 0x3 0x4"],
)
def test_malformed_resource_line_names_the_line(bad_line):
    with pytest.raises(BadInput, match=r"^resource:2: cannot parse"):
        parse_resource(ZERO_LINE + bad_line + "\n", source="resource")


def test_machine_without_pci_has_no_devices(tmp_path):
    assert read_pci_devices(str(tmp_path)) == []


def make_device(tmp_path, **files):
    device_dir = tmp_path / "bus" / "pci" / "devices" / "0000:00:02.0"
    device_dir.mkdir(parents=True)
    defaults = dict(
        class_="0x030000",
        vendor="0x1234",
        device="0x1111",
        subsystem_vendor="0x1af4",
        subsystem_device="0x1100",
        resource=ZERO_LINE,
    )
    defaults.update(files)
    for name, content in defaults.items():
        if content is not None:
            (device_dir / name.rstrip("_")).write_text(content + "\n")
    return device_dir


def test_malformed_class_file_is_named(tmp_path):
    make_device(tmp_path, class_="0xVGA")
    with pytest.raises(BadInput, match=r"0000:00:02.0/class: cannot parse '0xVGA'"):
        read_pci_devices(str(tmp_path))


def test_missing_resource_file_is_named(tmp_path):
    make_device(tmp_path, resource=None)
    with pytest.raises(BadInput, match=r"0000:00:02.0/resource does not exist"):
        read_pci_devices(str(tmp_path))


def load_capture_script():
    path = os.path.join(FIXTURES, "capture_snapshot.py")
    spec = importlib.util.spec_from_file_location("capture_snapshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_capture_of_this_machine_reads_back_like_live_sysfs(tmp_path):
    capture_snapshot = load_capture_script()
    target = tmp_path / "capture"
    assert capture_snapshot.main([str(target)]) == 0
    assert (target / "kernel-release").read_text().strip() == os.uname().release
    assert read_pci_devices(str(target / "sys")) == read_pci_devices("/sys")
