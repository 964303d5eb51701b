import meshbridge.providers as providers
from meshbridge.providers import anthropic, fake, openai, remote


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(providers) if not name.startswith("_")}
    # submodules (the kinds, once imported) and re-imported helpers are not the API
    public -= {"annotations", "anthropic", "fake", "openai", "remote"}
    assert set(providers.__all__) == public


def test_every_installed_kind_offers_the_same_interface() -> None:
    modules = {"fake": fake, "openai": openai, "anthropic": anthropic, "remote": remote}
    found = providers.kinds()
    assert set(found) == set(modules)
    for name, kind in found.items():
        module = modules[name]
        assert kind is module.KIND
        assert kind.name == name
        assert kind.parse_options is module.parse_options
        assert kind.create_app is module.create_app
        assert kind.summary
