"""The host policy file (lxc_cr/policy.py, schemas/config.schema.json)."""

from __future__ import annotations

import pytest

from lxc_cr import policy
from lxc_cr.errors import BadInput

pytestmark = pytest.mark.unit


def write(tmp_path, text: str) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def load_error(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(BadInput) as ei:
        policy.load(path)
    assert ei.value.exit_code == 2
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:")
    return msg[len(path) + 1:]


def test_missing_file_gives_defaults(tmp_path):
    p = policy.load(str(tmp_path / "nope.yaml"))
    assert not p.exists
    s = p.lxc("anything")
    assert s == policy.Settings()
    assert (s.action, s.image_dir, s.timeout, s.compress, s.order, s.resume_on_start) == \
        ("checkpoint", "/var/lib/lxc-cr/host", 120, False, 0, True)
    assert p.domain("x") == s
    assert p.image_dir == "/var/lib/lxc-cr/host"
    assert p.parallelism >= 1
    assert p.covers_lxc("anything") and p.covers_domain("x")


def test_env_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "parallelism: 5\n")
    monkeypatch.setenv("LXC_CR_CONFIG", path)
    p = policy.load()
    assert p.path == path and p.exists and p.parallelism == 5


def test_issue_shape_and_layering(tmp_path):
    p = policy.load(write(tmp_path, """\
defaults: {action: checkpoint, image_dir: /srv/images, timeout: 30}
containers: {web: {action: checkpoint, order: 5}, db: {action: shutdown}, "1": }
domains: {app: {action: checkpoint, compress: true}}
"""))
    assert p.image_dir == "/srv/images"
    web, db = p.lxc("web"), p.lxc("db")
    assert (web.action, web.order, web.timeout, web.image_dir) == ("checkpoint", 5, 30, "/srv/images")
    assert (db.action, db.timeout) == ("shutdown", 30)
    assert p.lxc("1") == p.lxc("unlisted")
    assert p.domain("app").compress is True
    assert p.domain("web").compress is False
    assert p.listed_containers == ["web", "db", "1"]


def test_scope_listed(tmp_path):
    p = policy.load(write(tmp_path, "scope: listed\ncontainers: {a: }\ndomains: {b: {}}\n"))
    assert p.covers_lxc("a") and not p.covers_lxc("b")
    assert p.covers_domain("b") and not p.covers_domain("a")


def test_empty_file_is_defaults(tmp_path):
    p = policy.load(write(tmp_path, "# nothing yet\n"))
    assert p.exists and p.lxc("x") == policy.Settings()


@pytest.mark.parametrize("text,line,words", [
    ("defaults:\n  action: checkpoint\n containers: {}\n", 3, ["malformed YAML"]),
    ("containers:\n  web: {action: [}\n", 2, ["malformed YAML"]),
    ("containers:\n  web:\n    action: hibernate\n", 3,
     ["containers.web.action", "'hibernate'", "checkpoint"]),
    ("defaults:\n  timeout: soon\n", 2, ["defaults.timeout", "'soon'", "number"]),
    ("defaults:\n  timeout: -3\n", 2, ["defaults.timeout", "-3"]),
    ("parallelism: 0\n", 1, ["parallelism"]),
    ("\n\ndomains:\n  app:\n    actoin: checkpoint\n", 5, ["unknown key 'actoin'", "action"]),
    ("containers: {}\nbogus: 1\n", 2, ["unknown key 'bogus'"]),
    ("containers:\n  web: {}\n  web: {action: ignore}\n", 3, ["duplicate key 'web'"]),
    ("containers:\n  web: {compress: maybe}\n", 2, ["containers.web.compress", "boolean"]),
    ("defaults:\n  image_dir: relative/dir\n", 2, ["defaults.image_dir"]),
    ("- just\n- a list\n", 1, ["object"]),
    ("containers:\n  ? [a, b]\n  : {}\n", 2, ["plain name"]),
])
def test_errors_name_file_line_problem(tmp_path, text, line, words):
    msg = load_error(tmp_path, text)
    assert msg.startswith(f"{line}: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_unreadable_path_is_bad_input(tmp_path):
    with pytest.raises(BadInput) as ei:
        policy.load(str(tmp_path))          # a directory
    assert str(tmp_path) in str(ei.value)


def test_schema_and_settings_agree():
    props = policy.schema()["$defs"]["settings"]["properties"]
    assert set(props) == {f for f in policy.Settings.__dataclass_fields__}
    assert props["action"]["enum"] == list(policy.ACTIONS)
