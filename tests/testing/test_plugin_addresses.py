"""``--meshbridge-aiohttp``: a test server's address is its own (never a
closed server's, the host it was given), and the run reports what happened,
also under pytest-xdist. Small test files in a pytester sandbox, each run in
a pytest subprocess."""

from __future__ import annotations

import pytest

from .test_plugin import AIOHTTP_TESTS, sandbox

pytestmark = pytest.mark.integration


def test_a_closed_servers_address_refuses_connections_and_is_never_lent_again(
    pytester: pytest.Pytester,
) -> None:
    sandbox(
        pytester,
        """
        PORTS = []


        async def test_a_closed_server_is_gone(aiohttp_server, aiohttp_client):
            first = await aiohttp_server(make_app())
            old = first.make_url("/whoami")
            await first.close()
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await session.get(old)  # refused, as over TCP: no 421 from a placeholder
            second = await aiohttp_server(make_app())
            assert second.port != first.port
            client = await aiohttp_client(second)
            async with client.get("/whoami") as response:
                assert response.status == 200
            PORTS.extend([first.port, second.port])


        @pytest.mark.parametrize("round", range(20))
        async def test_later_servers_get_new_ports(aiohttp_server, round):
            for _ in range(3):
                server = await aiohttp_server(make_app())
                assert server.port not in PORTS
                PORTS.append(server.port)
                await server.close()
        """,
    )
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp")
    result.assert_outcomes(passed=21)
    result.stdout.fnmatch_lines(["meshbridge: 21 tests served *through a mesh, 0 over TCP*"])


def test_the_host_a_server_is_given_is_the_one_its_urls_and_requests_name(
    pytester: pytest.Pytester,
) -> None:
    sandbox(
        pytester,
        """
        async def test_localhost(aiohttp_server, aiohttp_client):
            server = await aiohttp_server(make_app(), host="localhost")
            assert server.host == "localhost"
            assert server.make_url("/whoami").host == "localhost"
            client = await aiohttp_client(server)
            async with client.get("/whoami") as response:
                assert (await response.json())["host"] == f"localhost:{server.port}"


        async def test_an_address_a_mesh_does_not_have(aiohttp_server):
            await aiohttp_server(make_app(), host="::1")
        """,
    )
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["E * meshbridge: aiohttp_server(app, host='::1') asks for an address a mesh-served*"]
    )


SOCKET_TESTS = """
import ssl


async def test_tls(aiohttp_server):
    await aiohttp_server(make_app(), ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


async def test_reads_the_socket(aiohttp_client):
    client = await aiohttp_client(make_app())
    async with client.get("/whoami") as response:
        assert (await response.json())["socket"] is True
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_the_summary_counts_what_happened_also_under_xdist(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    sandbox(pytester, AIOHTTP_TESTS + SOCKET_TESTS)
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp", *workers)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "meshbridge: 3 tests served their aiohttp test servers through a mesh, "
            "0 over TCP (0 marked meshbridge_socket), "
            "1 needed a socket (failed: mark them meshbridge_socket)"
        ]
    )


def test_a_mesh_served_test_that_fails_is_told_the_mesh_has_no_socket(
    pytester: pytest.Pytester,
) -> None:
    sandbox(pytester, SOCKET_TESTS)
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_reads_the_socket _*",
            "*- meshbridge -*",
            "this test's aiohttp test servers were served through an in-process mesh*"
            "get_extra_info('socket') is None*@pytest.mark.meshbridge_socket",
        ]
    )
    assert result.stdout.str().count("- meshbridge -") == 1  # not for the TLS refusal
