"""Tests of the pytest plugin run small test files in a pytester sandbox."""

pytest_plugins = ["pytester"]
