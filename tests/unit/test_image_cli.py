"""``lxc-cr inspect`` and ``lxc-cr convert`` through the real command line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from lxc_cr.image import fields, format as F, kinds
from lxc_cr.image.reader import ImageReader
from lxc_cr.image.sample import UNKNOWN_TAG, write_demo_image

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LXC_CR = Path(sys.executable).parent / "lxc-cr"
SCHEMA = json.loads((REPO / "schemas" / "inspect.schema.json").read_text())
ERROR_LINE = re.compile(r"^lxc-cr: error: (?P<path>\S+): (?P<what>.+) at offset (?P<off>\d+)$")


def cli(*args):
    cmd = [str(LXC_CR)] if LXC_CR.exists() else [sys.executable, "-m", "lxc_cr.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "demo.img"
    write_demo_image(p, compress="zstd")
    return p


def assert_one_error_line(r, path):
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    m = ERROR_LINE.match(lines[0])
    assert m, lines[0]
    assert m["path"] == str(path)
    return m


def test_not_an_image(tmp_path):
    p = tmp_path / "text"
    p.write_text("just some text, long enough to have a header-sized start\n" * 20)
    m = assert_one_error_line(cli("inspect", p), p)
    assert "not an lxc-cr image" in m["what"] and m["off"] == "0"


def test_empty(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    m = assert_one_error_line(cli("inspect", p), p)
    assert "empty" in m["what"] and m["off"] == "0"


@pytest.mark.parametrize("keep", [5, 100, 600, -1, -30])
def test_truncated(demo, tmp_path, keep):
    data = demo.read_bytes()
    p = tmp_path / "trunc"
    p.write_bytes(data[:keep])
    m = assert_one_error_line(cli("inspect", p), p)
    assert "truncated" in m["what"] or "not an lxc-cr image" in m["what"]


def test_newer_version(demo, tmp_path):
    raw = bytearray(demo.read_bytes())
    raw[-10:-8] = (F.CURRENT_VERSION + 1).to_bytes(2, "little")
    p = tmp_path / "newer"
    p.write_bytes(raw)
    m = assert_one_error_line(cli("inspect", p), p)
    assert m["what"] == f"format version {F.CURRENT_VERSION + 1} is newer than supported " \
                        f"{F.CURRENT_VERSION}"
    assert int(m["off"]) == len(raw) - 10


def test_corrupt_record_pack_named(demo, tmp_path):
    with ImageReader(demo) as r:
        off = r.pack_offset
    raw = bytearray(demo.read_bytes())
    raw[off + 8] ^= 0x10
    p = tmp_path / "corrupt"
    p.write_bytes(raw)
    m = assert_one_error_line(cli("inspect", p), p)
    assert m["what"] == "record pack checksum mismatch" and int(m["off"]) == off


def test_human_output(demo):
    r = cli("inspect", demo)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"format     v{F.CURRENT_VERSION}" in out and "source     lxc demo" in out
    assert "kernel 6.1.0-demo, arch x86_64" in out
    assert "hostname 'demo'" in out and "eth0" in out
    # ps f tree: sleep under sh under init, thread counts, pages
    lines = {ln.split()[-1]: ln for ln in out.splitlines() if ln.rstrip().endswith(
        ("init", "sh", "sleep"))}
    assert "\\_ sh" in lines["sh"] and "    \\_ sleep" in lines["sleep"]
    assert lines["sh"].split()[4] == "2"               # THR
    assert lines["init"].split()[6] == "3"             # PAGES (2 + 1)
    assert "shared with 9:4" in out and "shared with 7:3" in out
    assert re.search(r"task\s+0x0100\s+3\s+\d+", out)
    assert f"tag_{UNKNOWN_TAG:#06x}" in out
    assert "page data: 6 blocks, 36864 bytes" in out


def test_json_output(demo):
    r = cli("inspect", demo, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert doc["format_version"] == F.CURRENT_VERSION and doc["source"] == {"kind": "lxc", "name": "demo"}
    assert doc["namespaces"]["uts"]["hostname"] == "demo"
    assert doc["namespaces"]["net"]["own"] is True
    assert [ln["name"] for ln in doc["namespaces"]["net"]["links"]] == ["lo", "eth0"]
    cg = doc["namespaces"]["cgroup"]
    assert (cg["own"], cg["ino"]) == (False, 4026531841)
    assert len(cg["tasks"]) == 1 and len(cg["limits"]) == 1     # one sample record of each
    tasks = {t["pid"]: t for t in doc["tasks"]}
    assert [t["pid"] for t in doc["tasks"]] == [1, 7, 9]
    assert tasks[7]["threads"] == 2 and tasks[7]["vmas"] == 2 and tasks[7]["pages"] == 3
    assert tasks[9]["ppid"] == 7 and tasks[9]["pgid"] == 7 and tasks[9]["sid"] == 1
    fd4 = [f for f in tasks[9]["fds"] if f["fd"] == 4][0]
    assert fd4["shared_with"] == [{"pid": 7, "fd": 3}]
    assert doc["records"]["task"] == {"tag": 0x100, "count": 3,
                                      "bytes": doc["records"]["task"]["bytes"]}
    assert doc["records"][f"tag_{UNKNOWN_TAG:#06x}"]["count"] == 1


@pytest.mark.parametrize("name", [k.name for k in kinds.all_kinds()])
def test_section_json_is_lossless(demo, name):
    r = cli("inspect", demo, "--section", name, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    kind = kinds.by_name(name)
    node = fields.node(kind.struct)
    with ImageReader(demo) as img:
        payloads = [(off, p) for t, off, p in img.raw_records(kind)]
    assert [rec["offset"] for rec in doc["records"]] == [off for off, _ in payloads]
    for rec, (_off, payload) in zip(doc["records"], payloads):
        assert kind.build(fields.from_json(node, rec["fields"])) == payload


def test_section_human_every_field(demo):
    r = cli("inspect", demo, "--section", "vma")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("vma (tag 0x0201): 6 records")
    for field in ("pid", "start", "end", "prot", "shared", "kind", "pgoff", "dev", "ino",
                  "size", "mtime_ns", "shmem_id", "madv", "path"):
        assert f"  {field} = " in r.stdout
    assert "start = 4194304 (0x400000)" in r.stdout
    assert "kind = file_private (1)" in r.stdout


def test_section_unknown_tag(demo):
    r = cli("inspect", demo, "--section", hex(UNKNOWN_TAG), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert bytes.fromhex(doc["records"][0]["raw"]) == b"a record from a newer lxc-cr"


def test_section_unknown_name(demo):
    r = cli("inspect", demo, "--section", "nosuchkind")
    assert r.returncode == 2
    assert r.stderr.startswith("lxc-cr: error: unknown record kind 'nosuchkind'")


def test_verbose_verifies(demo, tmp_path):
    raw = bytearray(demo.read_bytes())
    with ImageReader(demo) as img:
        ref = next(o.block for _, o in img.records("pages"))
    raw[ref.offset] ^= 1
    p = tmp_path / "badblock"
    p.write_bytes(raw)
    assert cli("inspect", p).returncode == 0          # blocks are not read without -v
    m = assert_one_error_line(cli("inspect", "-v", p), p)
    assert "block checksum mismatch" in m["what"] and int(m["off"]) == ref.offset


def test_convert_cli(demo, tmp_path):
    out = tmp_path / "copy.img"
    r = cli("convert", demo, out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == demo.read_bytes()
    r = cli("convert", tmp_path / "missing", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.startswith("lxc-cr: error:")
    assert not (tmp_path / "x").exists()


def test_installed_command_flushes_then_exits_with_its_code(demo):
    """The installed command ends with os._exit (cli._as_process): its whole output is
    still there, its exit code is the command's, and a reader that goes away early gets
    exit 1 without a traceback."""
    if not LXC_CR.exists():
        pytest.skip("lxc-cr is not installed in this interpreter's bin")
    r = cli("inspect", "--json", demo)
    assert r.returncode == 0 and json.loads(r.stdout)["image"].endswith("demo.img")
    p = subprocess.Popen([str(LXC_CR), "inspect", "--json", demo], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()                  # nobody reads: the flush at exit meets a closed pipe
    assert p.wait(timeout=60) == 1
    assert p.stderr.read() == b""
    p.stderr.close()
