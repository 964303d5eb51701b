"""Configs that are hostile or careless: every bad file is a ConfigError with
its place, there are bounds on sizes and numbers, and a config can be checked
without its secrets (`check --no-env`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshbridge import ConfigError, Mesh
from meshbridge.providers import OptionReader
from meshbridge.service import Service, load_config, main

FAKE = '[providers.local]\nkind = "fake"\n'


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "meshbridge.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def errors_of(path: Path) -> list[str]:
    """The errors of ``path``, each without the file name it starts with."""
    with pytest.raises(ConfigError) as caught:
        Mesh.from_config(path)
    lines = caught.value.lines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    return [line.removeprefix(f"{path}: ") for line in lines]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            b'[providers.local]\nkind = "fake"\nmodels = ["caf\xe9"]\n',
            "not UTF-8 text: byte 0xe9 at line 3, column 15",
            id="latin-1",
        ),
        pytest.param(
            "x = " + "[" * 5000 + "]" * 5000 + "\n",
            "not valid TOML: nested deeper than 32 tables and arrays (line 1)",
            id="5000-deep array",
        ),
        pytest.param(
            FAKE + "a = 1\nb = " + "{c = " * 3000 + "1" + "}" * 3000 + "\n",
            "not valid TOML: nested deeper than 32 tables and arrays (line 4)",
            id="3000-deep inline table",
        ),
        pytest.param(
            FAKE + "models = " + "[" * 40 + '"m"' + "]" * 40 + "\n",
            "providers.local.models: nested deeper than 32 tables and arrays",
            id="40-deep array",
        ),
        pytest.param(
            FAKE + "reply_tokens = " + "9" * 5000 + "\n",
            "not valid TOML: an integer of more than 4300 digits (line 3)",
            id="5000 digits",
        ),
        pytest.param(
            "# padding\n" * 120_000,
            "the file is larger than the limit of 1048576 bytes (1 MiB)",
            id="1.2 MB",
        ),
        pytest.param(
            "".join(f'[providers.p{i}]\nkind = "fake"\n' for i in range(1001)),
            "providers: 1001 providers, more than the limit of 1000",
            id="1001 providers",
        ),
        pytest.param(
            FAKE + "reply_tokens = 99999999999999999\n",
            "providers.local.reply_tokens: expected an integer <= 1000000, got 99999999999999999",
            id="reply_tokens",
        ),
        pytest.param(
            FAKE + "fail_every = 99999999999999999\n",
            "providers.local.fail_every: expected an integer <= 2147483647, got 99999999999999999",
            id="any integer option",
        ),
        pytest.param(
            FAKE + "time_to_first_token = 1e300\n",
            "providers.local.time_to_first_token: expected a number <= 1e+09, got 1e+300",
            id="any number option",
        ),
        pytest.param(
            FAKE + "tokens_per_second = inf\n",
            "providers.local.tokens_per_second: expected a number <= 1e+09, got inf",
            id="inf",
        ),
        pytest.param(
            FAKE + "tokens_per_second = nan\n",
            "providers.local.tokens_per_second: expected a number >= 0, got nan",
            id="nan",
        ),
        pytest.param(
            FAKE + "[server]\nmax_body_bytes = " + str(2**40) + "\n",
            f"server.max_body_bytes: expected an integer <= {1024**3}, got {2**40}",
            id="server.max_body_bytes",
        ),
        pytest.param(
            '[providers.up]\nkind = "openai"\nupstream = "https://example.com"\n'
            "max_body_bytes = 99999999999\n",
            f"providers.up.max_body_bytes: expected an integer <= {1024**3}, got 99999999999",
            id="a proxy's max_body_bytes",
        ),
        pytest.param(
            "[providers.local]\nkind = {x = 1}\n",
            "providers.local.kind: expected a string, got a table",
            id="kind is a table: one error",
        ),
    ],
)
def test_every_bad_file_is_one_config_error_naming_the_place(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    assert errors_of(write(tmp_path, content)) == [expected]


@pytest.mark.integration  # a real process
def test_check_prints_no_traceback_for_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"[providers.local]\nkind = '\xff'\n")
    done = subprocess.run(
        [sys.executable, "-m", "meshbridge", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == f"{path}: not UTF-8 text: byte 0xff at line 2, column 9\n1 error\n"
    assert "Traceback" not in done.stderr


def test_numbers_within_the_bounds_are_read() -> None:
    reader = OptionReader({"a": 2**31 - 1, "b": 1e9, "c": 5})
    assert reader.integer("a", 0) == 2**31 - 1
    assert reader.number("b", 0.0) == 1e9
    assert reader.integer("c", 0, maximum=5) == 5
    reader.finish()


async def test_a_failed_reload_of_an_unreadable_file_is_counted(tmp_path: Path) -> None:
    path = write(tmp_path, FAKE)
    async with Service(load_config(path), port=0) as service:
        for content in (b'[providers.local]\nkind = "\xff"\n', "x = " + "[" * 5000 + "]" * 5000):
            write(tmp_path, content)
            assert not await service.reloader.reload()
        failures = service.mesh.registry.get_sample_value(
            "meshbridge_config_reloads_total", {"result": "failure"}
        )
        assert failures == 2
        assert service.mesh.providers == ("local",)


# -- checking without the secrets -----------------------------------------------------

SECRETS = """
[server.clients.ci]
token_env = "MESHBRIDGE_LINT_TOKEN"
[providers.openai]
kind = "openai"
upstream = "https://api.openai.com"
api_key_env = "MESHBRIDGE_LINT_KEY"
"""


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHBRIDGE_LINT_TOKEN", raising=False)
    monkeypatch.delenv("MESHBRIDGE_LINT_KEY", raising=False)


def test_check_no_env_lists_unset_variables_as_warnings(
    tmp_path: Path, unset: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SECRETS)
    assert main(["check", str(path)]) == 1  # without the flag they are errors
    assert "2 errors" in capsys.readouterr().out
    assert main(["check", "--no-env", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: server.clients.ci.token_env: warning: environment variable "
        "MESHBRIDGE_LINT_TOKEN is not set",
        f"{path}: providers.openai.api_key_env: warning: environment variable "
        "MESHBRIDGE_LINT_KEY is not set",
        f"{path}: ok (2 variables not set), 1 providers: openai",
    ]


def test_check_no_env_still_reports_every_other_error(
    tmp_path: Path, unset: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SECRETS + "timeout = -1\n")
    assert main(["check", "--no-env", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: providers.openai.timeout: expected a number > 0, got -1",
        "1 error",
    ]


def test_routes_no_env_prints_the_table_and_warns_on_stderr(
    tmp_path: Path, unset: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SECRETS)
    assert main(["routes", "--no-env", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:3] == ["openai", "openai", "https://api.openai.com"]
    assert "api_key=$MESHBRIDGE_LINT_KEY" in out
    assert err.count("warning: environment variable") == 2


def test_a_config_read_without_its_secrets_never_builds_a_provider(
    tmp_path: Path, unset: None
) -> None:
    config = load_config(write(tmp_path, SECRETS), require_env=False)
    assert config.missing_env == (
        ("server.clients.ci.token_env", "MESHBRIDGE_LINT_TOKEN"),
        ("providers.openai.api_key_env", "MESHBRIDGE_LINT_KEY"),
    )
    with pytest.raises(ConfigError, match="MESHBRIDGE_LINT_KEY is not set"):
        config.build("openai")
    with pytest.raises(ConfigError, match="MESHBRIDGE_LINT_KEY is not set"):
        Service(config)
