from aiohttp import web

import meshbridge


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(meshbridge) if not name.startswith("_")}
    # the layers built on the core appear here once imported; they are not its API
    public -= {"annotations", "providers", "service", "testing"}
    assert set(meshbridge.__all__) == public


def test_exported_members_come_from_meshbridge() -> None:
    for name in meshbridge.__all__:
        member = getattr(meshbridge, name)
        if isinstance(member, web.AppKey):  # a typed key: its name says where it is from
            assert str(member).startswith("<AppKey(meshbridge."), name
        else:
            assert member.__module__.startswith("meshbridge"), name
