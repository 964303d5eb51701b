import providers


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(providers) if not name.startswith("_")}
    public -= {"annotations"}
    assert set(providers.__all__) == public


def test_every_kind_offers_the_same_interface() -> None:
    for name, kind in providers.KINDS.items():
        module = getattr(providers, name)
        assert kind is module.KIND
        assert kind.name == name
        assert kind.parse_options is module.parse_options
        assert kind.create_app is module.create_app
