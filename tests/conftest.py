"""Shared fixtures. Text-side fixtures live in tests/text_fixtures.py, ranker-side ones in tests/ranking_fixtures.py."""

pytest_plugins = ["tests.data_fixtures", "tests.text_fixtures", "tests.ranking_fixtures", "tests.serve_fixtures"]
