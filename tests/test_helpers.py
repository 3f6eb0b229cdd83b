"""The shared test helpers do what the tests rely on."""

from tests.helpers import flags_with


def test_flags_with_overrides_removes_and_appends():
    base = ["--a=1", "--noaux", "--keep", "--b=2"]
    assert flags_with(base, a=3, aux=True, b=None, c=False) == [
        "--keep",
        "--a=3",
        "--aux",
        "--noc",
    ]
