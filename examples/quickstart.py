import asyncio

import aiohttp
from aiohttp import web

from meshbridge import Mesh, Source, api_key_id_of, source_of, use_api_key_id, use_source


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in body["prompt"].split():
        await response.write(f"data: {word} (from {source_of(request)})\n\n".encode())
    return response


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"source": source_of(request), "key": api_key_id_of(request)})


async def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/whoami", whoami)

    mesh = Mesh()  # its own prometheus registry: mesh.registry
    mesh.register("openai", app)  # the URL host names the provider

    async with mesh:  # runs the app's startup and, at the end, its cleanup
        async with mesh.session(source=Source.AGENTS, api_key_id="key-1") as s:
            async with s.post(
                "http://openai/v1/chat/completions", json={"prompt": "hello in-process world"}
            ) as r:
                async for line in r.content:
                    if line.strip():
                        print(line.decode().strip())

            with use_source("batch"), use_api_key_id("key-2"):  # per-call overrides
                async with s.get("http://openai/v1/whoami") as r:
                    print(await r.json())  # {'source': 'batch', 'key': 'key-2'}

        pinned = mesh.connector(provider="openai", source="api")  # every request to "openai"
        async with (
            aiohttp.ClientSession(connector=pinned) as s2,
            s2.get("https://any-host/v1/whoami") as r,
        ):
            print(await r.json())  # {'source': 'api', 'key': None}


asyncio.run(main())
