"""The [ledger] table and the admin settings of [server]: every key checked
when the config is read, every mistake reported at once with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshbridge import ConfigError
from meshbridge.service import LedgerConfig, load_config

PROVIDERS = '\n[providers.llm]\nkind = "fake"\n'


def redact_cards(prompt: str) -> str:
    """A redaction hook, named in configs as tests.service.test_ledger_config:redact_cards."""
    return prompt.replace("4111", "####")


NOT_CALLABLE = "a string"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(text + PROVIDERS)
    return path


def test_the_ledger_is_on_by_default_in_the_state_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.ledger == LedgerConfig()
    assert (config.ledger.enabled, config.ledger.record_prompts) == (True, False)
    assert config.ledger.url == ""  # the SQLite file in the state directory


def test_every_ledger_key_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MB_TEST_LEDGER_URL", "postgresql://meshbridge:pw@db.internal/ledger")
    config = load_config(
        write(
            tmp_path,
            """
[ledger]
url_env = "MB_TEST_LEDGER_URL"
enabled = false
retention_days = 30
record_prompts = true
prompt_max_chars = 500
redact = "tests.service.test_ledger_config:redact_cards"
queue_size = 50000
batch_size = 1000
flush_interval = 1.5
spool_max_bytes = 1048576
""",
        )
    )
    assert config.ledger == LedgerConfig(
        url="postgresql://meshbridge:pw@db.internal/ledger",
        enabled=False,
        retention_days=30,
        record_prompts=True,
        prompt_max_chars=500,
        redact=redact_cards,
        queue_size=50000,
        batch_size=1000,
        flush_interval=1.5,
        spool_max_bytes=1048576,
    )
    assert "pw" not in repr(config.ledger)


def test_a_relative_sqlite_path_is_from_the_configs_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[ledger]\nurl = "sqlite:///data/ledger.db"'))
    assert config.ledger.url == f"sqlite:///{tmp_path / 'data' / 'ledger.db'}"


def test_every_mistake_is_reported_at_once_with_its_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MB_TEST_UNSET", raising=False)
    monkeypatch.setenv("MB_TEST_SHORT", "short")
    text = """
[server]
admin_token_env = "MB_TEST_SHORT"
admin_api_public = "yes"
[server.clients.ci]
token = "token-of-the-ci-client"
admin = 1
[ledger]
url = "mysql://root:hunter2@db/ledger"
retention_days = -1
prompt_max_chars = 0
redact = "no.such.module:scrub"
queue_size = "big"
batch_size = 0
flush_interval = 0
spool_max_bytes = 2.5
colour = "blue"
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    found = dict(caught.value.errors)
    assert set(found) == {
        "server.admin_token_env",
        "server.admin_api_public",
        "server.clients.ci.admin",
        "ledger.url",
        "ledger.retention_days",
        "ledger.prompt_max_chars",
        "ledger.redact",
        "ledger.queue_size",
        "ledger.batch_size",
        "ledger.flush_interval",
        "ledger.spool_max_bytes",
        "ledger.colour",
    }
    assert "hunter2" not in found["ledger.url"]
    assert "sqlite:/// or postgresql://" in found["ledger.url"]
    assert "cannot import 'no.such.module:scrub'" in found["ledger.redact"]
    assert "at least 8 characters" in found["server.admin_token_env"]


@pytest.mark.parametrize(
    ("ledger", "key", "complaint"),
    [
        ('url = "sqlite:///x.db"\nurl_env = "MB_TEST_LEDGER_URL"', "ledger.url", "not both"),
        ('url_env = "MB_TEST_UNSET"', "ledger.url_env", "MB_TEST_UNSET is not set"),
        ('url = "sqlite://"', "ledger.url", "expected sqlite:///PATH"),
        ('url = "postgresql:///ledger"', "ledger.url", "expected postgresql://USER@HOST"),
        ('redact = "scrub"', "ledger.redact", "expected 'package.module:function'"),
        (
            'redact = "tests.service.test_ledger_config:NOT_CALLABLE"',
            "ledger.redact",
            "is not callable",
        ),
    ],
)
def test_a_bad_ledger_key_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: str, key: str, complaint: str
) -> None:
    monkeypatch.setenv("MB_TEST_LEDGER_URL", "sqlite:///y.db")
    monkeypatch.delenv("MB_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f"[ledger]\n{ledger}"))
    ((where, message),) = caught.value.errors
    assert where == key
    assert complaint in message


def test_the_admin_token_may_not_be_a_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MB_TEST_ADMIN", "token-of-the-ci-client")
    text = """
[server]
admin_token_env = "MB_TEST_ADMIN"
[server.clients.ci]
token = "token-of-the-ci-client"
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert list(caught.value.errors) == [
        ("server.admin_token_env", "the same token as server.clients.ci")
    ]
