import meshbridge


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(meshbridge) if not name.startswith("_")}
    # submodules and re-imported helpers are not part of the API
    # the layers built on the core appear here once imported; they are not its API
    public -= {"annotations", "providers", "service"}
    assert set(meshbridge.__all__) == public


def test_exported_members_come_from_meshbridge() -> None:
    for name in meshbridge.__all__:
        member = getattr(meshbridge, name)
        assert member.__module__.startswith("meshbridge"), name
