"""The pytest plugin, run on small test files in a pytester sandbox.

Each sandbox is a fresh pytest run (in this process) that loads the plugin
through its ``pytest11`` entry point, as any project that installs
meshbridge does, with pytest-aiohttp beside it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
addopts = -p no:cacheprovider
"""

APP = """
import asyncio
import aiohttp
import pytest
from aiohttp import web

from meshbridge import api_key_id_of, source_of


async def whoami(request: web.Request) -> web.Response:
    has_socket = request.transport.get_extra_info("socket") is not None
    return web.json_response(
        {"source": source_of(request), "key": api_key_id_of(request), "socket": has_socket,
         "host": request.host, "remote": request.remote}
    )


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/whoami", whoami)
    return app
"""


def sandbox(pytester: pytest.Pytester, tests: str, ini: str = INI) -> None:
    pytester.makeini(ini)
    pytester.makepyfile(test_sandbox=APP + textwrap.dedent(tests))


def test_the_plugin_is_loaded_through_its_entry_point_and_explains_its_options(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(
        [
            "*meshbridge: aiohttp test servers without sockets*",
            "*--meshbridge-aiohttp*serve pytest-aiohttp's aiohttp_client and*",
            "*meshbridge_aiohttp (bool)*",
        ]
    )
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["*@pytest.mark.meshbridge_socket: the test needs a real socket*"])


def test_mesh_and_mesh_client_serve_apps_with_startup_before_and_cleanup_after(
    pytester: pytest.Pytester,
) -> None:
    sandbox(
        pytester,
        """
        EVENTS = []


        async def resources(app: web.Application):
            EVENTS.append("startup")
            yield
            EVENTS.append("cleanup")


        async def test_a_client_through_the_mesh(mesh, mesh_client):
            app = make_app()
            app.cleanup_ctx.append(resources)
            client = await mesh_client(app, source="agents", api_key_id="key-1")
            assert EVENTS == ["startup"]
            assert str(client.make_url("/whoami")) == "http://app/whoami"
            async with client.get("/whoami") as response:
                body = await response.json()
            assert body == {"source": "agents", "key": "key-1", "socket": False,
                            "host": "app", "remote": "127.0.0.1"}
            second = await mesh_client(make_app())
            assert second.server.host == "app-2"
            assert set(mesh.providers) == {"app", "app-2"}
            # the mesh is the test's: its sessions reach every app in it
            async with mesh.session(source="batch") as session:
                async with session.get("http://app-2/whoami") as response:
                    assert (await response.json())["source"] == "batch"


        def test_cleanup_ran_after_the_test():
            assert EVENTS == ["startup", "cleanup"]
        """,
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_mesh_fails_a_test_that_leaves_a_request_in_flight(pytester: pytest.Pytester) -> None:
    sandbox(
        pytester,
        """
        async def endless(request):
            response = web.StreamResponse()
            await response.prepare(request)
            await asyncio.Event().wait()


        async def test_leaves_a_stream_open(mesh):
            app = web.Application()
            app.router.add_get("/endless", endless)
            mesh.register("stream", app)
            session = mesh.session()
            response = await session.get("http://stream/endless")
            assert response.status == 200
            mesh.leftover = session  # closed below, after the fixture has looked
        """,
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_stream_open*",
            "*meshbridge: requests still in flight when the test ended (1 to stream/none)*",
        ]
    )


def test_mesh_fails_a_test_that_leaves_a_task_running(pytester: pytest.Pytester) -> None:
    sandbox(
        pytester,
        """
        STARTED = []  # held, so the loop cannot lose the forgotten task to the GC


        async def forever():
            await asyncio.Event().wait()


        async def test_starts_and_forgets(mesh):
            STARTED.append(asyncio.get_running_loop().create_task(forever()))


        async def test_cleans_up(mesh):
            task = asyncio.get_running_loop().create_task(forever())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        """,
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*meshbridge: 1 task(s) still running when the test ended (forever): await or cancel*"]
    )


AIOHTTP_TESTS = """
async def test_client_of_an_app(aiohttp_client):
    client = await aiohttp_client(make_app())
    async with client.get("/whoami") as response:
        body = await response.json()
    assert body["socket"] is False
    assert body["host"] == f"127.0.0.1:{client.port}"
    assert body["remote"] == "127.0.0.1"


async def test_client_of_a_server(aiohttp_server, aiohttp_client):
    server = await aiohttp_server(make_app())
    client = await aiohttp_client(server)
    async with client.get("/whoami") as response:
        assert (await response.json())["socket"] is False
"""


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (["--meshbridge-aiohttp"], INI),
        ([], INI + "meshbridge_aiohttp = true\n"),
    ],
    ids=["option", "ini"],
)
def test_the_opt_in_serves_pytest_aiohttps_fixtures_through_a_mesh(
    pytester: pytest.Pytester, args: list[str], ini: str
) -> None:
    sandbox(pytester, AIOHTTP_TESTS, ini=ini)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["meshbridge: 2 tests served their aiohttp test servers through a mesh, 0 over TCP*"]
    )


GOVERNED_TESTS = """
async def test_a_governed_server_answers_as_any_other(aiohttp_server, aiohttp_client):
    server = await aiohttp_server(make_app())
    assert set(server.mesh.policies) == {server.name}  # its requests go through the relay
    assert server.mesh.policies[server.name].timeout is not None
    client = await aiohttp_client(server)
    async with client.get("/whoami") as response:
        assert (await response.json())["socket"] is False
"""


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (["--meshbridge-aiohttp", "--meshbridge-governed"], INI),
        ([], INI + "meshbridge_aiohttp = true\nmeshbridge_governed = true\n"),
    ],
    ids=["option", "ini"],
)
def test_governed_serves_every_test_server_through_a_policy_that_never_acts(
    pytester: pytest.Pytester, args: list[str], ini: str
) -> None:
    sandbox(pytester, AIOHTTP_TESTS + GOVERNED_TESTS, ini=ini)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)


def test_without_the_opt_in_pytest_aiohttps_fixtures_are_untouched(
    pytester: pytest.Pytester,
) -> None:
    sandbox(pytester, AIOHTTP_TESTS.replace('["socket"] is False', '["socket"] is True'))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("meshbridge: *")


def test_a_test_that_needs_a_socket_fails_saying_so_and_how_to_opt_out(
    pytester: pytest.Pytester,
) -> None:
    sandbox(
        pytester,
        """
        import ssl


        async def test_own_session(aiohttp_server):
            server = await aiohttp_server(make_app())
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/whoami")) as response:
                    assert response.status == 421  # what the address answers


        async def test_raw_socket(aiohttp_server):
            server = await aiohttp_server(make_app())
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /whoami HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            head = await reader.readline()
            writer.close()
            await writer.wait_closed()
            assert head.startswith(b"HTTP/1.1 421")


        async def test_tls(aiohttp_server):
            await aiohttp_server(make_app(), ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


        async def test_own_connector(aiohttp_client):
            await aiohttp_client(make_app(), connector=aiohttp.TCPConnector())


        @pytest.mark.meshbridge_socket
        async def test_marked(aiohttp_server, aiohttp_client):
            server = await aiohttp_server(make_app())
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/whoami")) as response:
                    assert (await response.json())["socket"] is True
            client = await aiohttp_client(make_app())
            async with client.get("/whoami") as response:
                assert (await response.json())["socket"] is True
        """,
    )
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp")
    result.assert_outcomes(passed=3, failed=2, errors=2)
    hint = "*opts out with @pytest.mark.meshbridge_socket"
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_own_session*",
            "meshbridge: a socket reached this test's server (a request 'GET /whoami HTTP/1.1')*"
            + hint,
            "*ERROR at teardown of test_raw_socket*",
            "meshbridge: a socket reached this test's server (a request 'GET /whoami HTTP/1.1')*"
            + hint,
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E * meshbridge: aiohttp_server(app, ssl=...) asks for TLS, which needs a socket;*"
            + hint,
            "E * meshbridge: aiohttp_client(..., connector=...) brings its own connector*" + hint,
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "meshbridge: 0 tests served their aiohttp test servers through a mesh, "
            "1 over TCP (1 marked meshbridge_socket), "
            "4 needed a socket (failed: mark them meshbridge_socket)"
        ]
    )


def test_a_client_follows_a_redirect_to_another_test_servers_address(
    pytester: pytest.Pytester,
) -> None:
    sandbox(
        pytester,
        """
        async def test_redirect(aiohttp_server, aiohttp_client):
            target = await aiohttp_server(make_app())

            async def away(request):
                raise web.HTTPFound(target.make_url("/whoami"))

            origin = web.Application()
            origin.router.add_get("/away", away)
            client = await aiohttp_client(origin)
            assert client.port != target.port
            async with client.get("/away") as response:
                assert response.url == target.make_url("/whoami")
                assert (await response.json())["host"] == f"127.0.0.1:{target.port}"
        """,
    )
    result = pytester.runpytest_subprocess("--meshbridge-aiohttp")
    result.assert_outcomes(passed=1)


def test_the_plugin_and_fake_llm_work_without_the_sdks_installed() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys

        class NoSDKs:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"openai", "anthropic", "httpx_aiohttp"}:
                    raise ImportError(f"{name} is not installed")
                return None

        sys.meta_path.insert(0, NoSDKs())
        import meshbridge.testing.plugin
        from meshbridge import Mesh
        from meshbridge.testing import FakeLLM

        async def main():
            async with Mesh() as mesh:
                fake = await FakeLLM.start(mesh)
                fake.script.reply("hi")
                async with mesh.session() as session:
                    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
                    async with session.post("http://llm/v1/chat/completions", json=body) as r:
                        print((await r.json())["choices"][0]["message"]["content"])
                try:
                    fake.openai
                except ImportError as exc:
                    print("no sdk:", exc)
                await fake.aclose()
            loaded = {m.split(".")[0] for m in sys.modules}
            print(sorted(loaded & {"openai", "anthropic", "httpx_aiohttp"}))

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == ["hi", "no sdk: openai is not installed", "[]"]
