"""Root conftest: loads the test harness for tests/ and for the doctests under lightning_reuse/."""

pytest_plugins = ["tests.helpers.harness", "tests.helpers.files"]
