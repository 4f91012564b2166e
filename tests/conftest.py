"""Shared fixtures. Text-side fixtures live in tests/text_fixtures.py, fine-tuning runs in tests/finetune_fixtures.py,
ranker-side ones in tests/ranking_fixtures.py, embedding-engine ones (local Ray, killable embed runs) in
tests/embed_fixtures.py, a tiny served project in tests/serve_fixtures.py."""

pytest_plugins = [
    "tests.data_fixtures",
    "tests.text_fixtures",
    "tests.finetune_fixtures",
    "tests.ranking_fixtures",
    "tests.embed_fixtures",
    "tests.serve_fixtures",
]
