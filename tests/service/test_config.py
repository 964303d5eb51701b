"""Provider routing configs: every error at once, named by file and key path; never half a mesh."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshbridge import ConfigError, Mesh, MissingAPIKeyID

FAKE = '[providers.local]\nkind = "fake"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshbridge.toml"
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Mesh.from_config(path)
    lines = caught.value.lines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert str(caught.value) == "\n".join(lines)
    return [line.removeprefix(f"{path}: ") for line in lines]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            FAKE + "colour = 'red'\n",
            "providers.local.colour: unknown key (expected one of: fail_every, kind, models, "
            "outage_after, outage_for, outage_status, policy, reply_tokens, "
            "require_api_key_id, time_to_first_token, tokens_per_second)",
            id="unknown provider key",
        ),
        pytest.param(
            FAKE + "[extra]\n",
            "extra: unknown key (expected one of: ledger, limits, prices, providers, routes, "
            "server, store)",
            id="unknown top-level key",
        ),
        pytest.param(
            FAKE + "tokens_per_second = 'fast'\n",
            "providers.local.tokens_per_second: expected a number >= 0, got a string ('fast')",
            id="wrong type",
        ),
        pytest.param(
            FAKE + "require_api_key_id = 1\n",
            "providers.local.require_api_key_id: expected true or false, got an integer (1)",
            id="wrong type of a common key",
        ),
        pytest.param(
            '[providers.x]\nkind = "gemini"\n',
            "providers.x.kind: expected one of: anthropic, fake, openai, remote; got 'gemini'",
            id="unknown kind",
        ),
        pytest.param(
            "[providers.x]\ntokens_per_second = 3\n",
            "providers.x.kind: expected one of: anthropic, fake, openai, remote; it is missing",
            id="missing kind",
        ),
        pytest.param(
            '[providers.Open_AI]\nkind = "fake"\n',
            "providers.Open_AI: invalid provider name 'Open_AI': expected lower-case letters",
            id="bad name",
        ),
        pytest.param(
            "providers.local = 3\n",
            "providers.local: expected a table with kind = ... and its options",
            id="provider not a table",
        ),
        pytest.param(
            '[providers.openai]\nkind = "openai"\nupstream = "api.openai.com"\n',
            "providers.openai.upstream: expected an http:// or https:// URL with a host",
            id="bad url",
        ),
        pytest.param(
            '[providers.openai]\nkind = "openai"\n',
            "providers.openai.upstream: missing: expected an http:// or https:// URL",
            id="missing url",
        ),
        pytest.param(
            '[providers.openai]\nkind = "openai"\nupstream = "https://api.openai.com"\n'
            'api_key_env = "MESHBRIDGE_TEST_UNSET"\n',
            "providers.openai.api_key_env: environment variable MESHBRIDGE_TEST_UNSET is not set",
            id="missing env var",
        ),
        pytest.param(
            '[server]\nlisten = "8080"\n' + FAKE,
            "server.listen: expected HOST:PORT (such as '127.0.0.1:8080'), got '8080'",
            id="bad listen",
        ),
        pytest.param(
            "[server]\nadmin_refresh = 0.05\n" + FAKE,
            "server.admin_refresh: expected a number >= 0.2",
            id="admin page refreshed too often",
        ),
        pytest.param(
            '[server.clients.ci]\ntoken_env = "MESHBRIDGE_TEST_UNSET"\n' + FAKE,
            "server.clients.ci.token_env: environment variable MESHBRIDGE_TEST_UNSET is not set",
            id="missing token env var",
        ),
        pytest.param(
            '[server.clients.ci]\ntoken = "12345678"\nsource = "Not A Source"\n' + FAKE,
            "server.clients.ci.source: invalid source 'Not A Source'",
            id="bad source",
        ),
        pytest.param(
            '[server.clients.ci]\nsource = "api"\n' + FAKE,
            "server.clients.ci.token: expected exactly one of token or token_env",
            id="no token",
        ),
        pytest.param("", "providers: expected at least one [providers.NAME] table", id="empty"),
        pytest.param(
            "[providers\n",
            "not valid TOML: Expected ']' at the end of a table declaration",
            id="syntax",
        ),
    ],
)
def test_each_error_names_the_file_the_key_path_and_what_is_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.delenv("MESHBRIDGE_TEST_UNSET", raising=False)
    errors = errors_of(write(tmp_path, text))
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        listen = "nowhere"
        [providers.local]
        kind = "fake"
        reply_tokens = 0
        [providers.BAD]
        kind = "fake"
        [providers.up]
        kind = "openai"
        upstream = "ftp://example.com"
        timeout = -1
        """,
    )
    assert [e.split(":")[0] for e in errors_of(path)] == [
        "server.listen",
        "providers.local.reply_tokens",
        "providers.BAD",
        "providers.up.upstream",
        "providers.up.timeout",
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "absent.toml") == [
        "cannot read the file: No such file or directory"
    ]


async def test_from_config_registers_every_provider_with_its_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHBRIDGE_TEST_KEY", "sk-test")
    path = write(
        tmp_path,
        """
        [providers.local]
        kind = "fake"
        tokens_per_second = 0
        time_to_first_token = 0
        reply_tokens = 4
        [providers.openai]
        kind = "openai"
        upstream = "https://api.openai.com"
        api_key_env = "MESHBRIDGE_TEST_KEY"
        require_api_key_id = true
        [providers.groq]
        kind = "openai"
        upstream = "https://api.groq.com/openai"
        [providers.claude]
        kind = "anthropic"
        upstream = "https://api.anthropic.com"
        """,
    )
    mesh = Mesh.from_config(path)
    assert mesh.providers == ("local", "openai", "groq", "claude")
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
    async with mesh, mesh.session(source="agents") as session:
        async with session.post("http://local/v1/chat/completions", json=body) as response:
            answer = await response.json()
        with pytest.raises(MissingAPIKeyID):
            await session.get("http://openai/v1/models")
    assert answer["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("name", ["local.toml", "meshbridge.toml"])
def test_the_examples_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "MESHBRIDGE_TOKEN",
        "MESHBRIDGE_DASHBOARD_TOKEN",
        "MESHBRIDGE_NIGHTLY_TOKEN",
        "OPENAI_API_KEY",
        "GROQ_API_KEY",
        "ANTHROPIC_API_KEY",
    ):
        monkeypatch.setenv(variable, f"value-of-{variable.lower()}")
    mesh = Mesh.from_config(Path(__file__).parents[2] / "examples" / name)
    assert "local" in mesh.providers


def test_two_clients_cannot_share_a_token(tmp_path: Path) -> None:
    clients = "".join(
        f'[server.clients.{name}]\ntoken = "the-same-token"\n' for name in ("one", "two")
    )
    path = write(tmp_path, clients + FAKE)
    assert errors_of(path) == ["server.clients.two.token: the same token as server.clients.one"]
