"""Specification of `bertrs serve`: every endpoint's good and bad requests, the page, and a model that works from
anywhere. The app is built on a tiny trained project (tests/serve_fixtures.py) and driven with FastAPI's TestClient;
the page is driven in a real headless Chromium where one is installed."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.io import DataError  # noqa: E402
from pipeline.ranking.recommend import known_pairs  # noqa: E402
from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.schema import MAX_K  # noqa: E402
from pipeline.serve.model import load_served  # noqa: E402
from stages.cli import app as cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def served(serve_project):
    return load_served(serve_project.model("bert_rs"), serve_project.prepared)


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served))


@pytest.fixture(scope="module")
def pop_client(serve_project):
    return TestClient(create_app(load_served(serve_project.model("pop"), serve_project.prepared)))


def a_user_with_reviews(served) -> str:
    counts = np.bincount(served.reviews.users, minlength=served.data.n_users)
    return served.data.user_ids[int(np.argmax(counts))]


# ---------------------------------------------------------------------------------------------- good requests


def test_health_names_the_model_and_what_it_can_serve(client, served):
    body = client.get("/health").json()
    assert body == {"status": "ok", "run": "bert_rs", "model": "bert_rs", "n_users": served.data.n_users,
                    "n_items": served.data.n_items, "text_model": True, "search": True,
                    "search_note": body["search_note"]}
    assert "mean pooling" in body["search_note"]


def test_recommend_returns_k_new_items_whose_parts_sum_to_the_score(client, served):
    user = a_user_with_reviews(served)
    body = client.get("/recommend", params={"user": user, "k": 7}).json()
    assert body["user"] == user and body["k"] == 7 and len(body["items"]) == 7
    u = served.user_lookup[user]
    items = np.asarray([served.item_lookup[it["item"]] for it in body["items"]])
    assert not known_pairs(served.data).contains(np.full(7, u), items).any()
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True) and [it["rank"] for it in body["items"]] == list(range(1, 8))
    for it in body["items"]:
        assert set(it["parts"]) == {"item_model", "text_match", "popularity"}
        assert sum(it["parts"].values()) == pytest.approx(it["score"], abs=1e-4)


def test_recommend_explains_with_the_best_matching_pair_of_training_reviews(client, served):
    user = a_user_with_reviews(served)
    u = served.user_lookup[user]
    item = client.get("/recommend", params={"user": user, "k": 1}).json()["items"][0]
    i = served.item_lookup[item["item"]]
    reason = item["reason"]
    reviews = served.reviews
    mine, theirs = reviews.by_user[u], reviews.by_item[i]
    sims = reviews.vectors[mine] @ reviews.vectors[theirs].T
    a, b = np.unravel_index(np.argmax(sims), sims.shape)
    assert reason["similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    assert reason["user_review"]["user"] == user and reason["item_review"]["item"] == item["item"]
    for side, row in (("user_review", mine[a]), ("item_review", theirs[b])):
        assert " ".join(reviews.texts[row].split()).startswith(reason[side]["snippet"].removesuffix("…"))
    assert reason["user_review"]["item"] == served.data.item_ids[int(reviews.items[mine[a]])]
    assert "reads like a review of" in reason["text"] and f"{sims.max():.2f}" in reason["text"]


def test_history_lists_only_training_reviews_newest_first(client, served):
    user = a_user_with_reviews(served)
    u = served.user_lookup[user]
    body = client.get("/history", params={"user": user}).json()
    train_items = set(served.data.train.items[served.data.train.users == u].tolist())
    held_out = set(served.data.valid.items[served.data.valid.users == u].tolist()) | set(
        served.data.test.items[served.data.test.users == u].tolist())
    shown = {served.item_lookup[r["item"]] for r in body["reviews"]}
    assert shown == train_items and not shown & held_out
    dates = [r["date"] for r in body["reviews"]]
    assert dates == sorted(dates, reverse=True)


def test_similar_ranks_items_by_profile_cosine_and_leaves_out_the_item_itself(client, served):
    profiles = served.profiles
    i = int(np.flatnonzero(profiles.item_has_reviews)[0])
    item = served.data.item_ids[i]
    body = client.get("/similar", params={"item": item, "k": 5}).json()
    assert body["item"]["item"] == item and len(body["items"]) == 5
    unit = profiles.items / np.linalg.norm(profiles.items, axis=1, keepdims=True)
    cosine = unit @ unit[i]
    cosine[i] = -np.inf
    cosine[~profiles.item_has_reviews] = -np.inf
    expected = np.argsort(-cosine, kind="stable")[:5]
    assert [served.item_lookup[it["item"]] for it in body["items"]] == expected.tolist()
    assert [it["similarity"] for it in body["items"]] == pytest.approx(cosine[expected].tolist(), abs=1e-5)


def test_search_embeds_the_query_with_the_caches_encoder_and_ranks_items_by_profile(client, served):
    query = served.reviews.texts[0]
    body = client.get("/search", params={"q": query, "k": 4}).json()
    vector = served.encode([query])[0]
    profiles = served.profiles
    unit = profiles.items / np.linalg.norm(profiles.items, axis=1, keepdims=True)
    cosine = unit @ (vector / np.linalg.norm(vector))
    cosine[~profiles.item_has_reviews] = -np.inf
    expected = np.argsort(-cosine, kind="stable")[:4]
    assert body["query"] == query and [served.item_lookup[it["item"]] for it in body["items"]] == expected.tolist()


def test_users_lists_the_most_active_first_and_filters_by_prefix(client, served):
    body = client.get("/users", params={"limit": 3}).json()
    counts = [u["train_reviews"] for u in body["users"]]
    assert body["total"] == served.data.n_users and counts == sorted(counts, reverse=True)
    prefix = served.data.user_ids[0][:3]
    body = client.get("/users", params={"prefix": prefix, "limit": 1000}).json()
    assert {u["user"] for u in body["users"]} == {u for u in served.data.user_ids if u.startswith(prefix)}


def test_openapi_documents_every_endpoint_with_its_response_model(client):
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/similar", "/search", "/health", "/history", "/users"} <= set(schema["paths"])
    assert {"RecommendResponse", "Reason", "SimilarResponse", "ErrorResponse"} <= set(schema["components"]["schemas"])
    assert client.get("/docs").status_code == 200


def test_the_page_and_its_script_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/recommend" in script.text


# ----------------------------------------------------------------------------------------------- bad requests


BAD_REQUESTS = [
    ("/recommend", {"user": "nobody", "k": 5}, 404, "unknown user 'nobody'"),
    ("/recommend", {"k": 5}, 422, "user"),
    ("/recommend", {"user": "@", "k": 0}, 422, "k:"),
    ("/recommend", {"user": "@", "k": -3}, 422, "k:"),
    ("/recommend", {"user": "@", "k": MAX_K + 1}, 422, "k:"),
    ("/recommend", {"user": "@", "k": "ten"}, 422, "k:"),
    ("/recommend", {"user": "@", "k": 2.5}, 422, "k:"),
    ("/similar", {"item": "no-such-item"}, 404, "unknown item 'no-such-item'"),
    ("/similar", {"item": "#", "k": 0}, 422, "k:"),
    ("/similar", {}, 422, "item"),
    ("/search", {"q": "   "}, 422, "query text is empty"),
    ("/search", {"q": ""}, 422, "query text is empty"),
    ("/search", {}, 422, "q"),
    ("/search", {"q": "jazz", "k": -1}, 422, "k:"),
    ("/search", {"q": "x" * 2001}, 422, "q:"),
    ("/history", {"user": "nobody"}, 404, "unknown user"),
    ("/users", {"limit": 0}, 422, "limit"),
]


@pytest.mark.parametrize(("path", "params", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_message_saying_what_is_wrong(client, served, path, params, status, message):
    params = {k: (a_user_with_reviews(served) if v == "@" else served.data.item_ids[0] if v == "#" else v)
              for k, v in params.items()}
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail


@pytest.mark.parametrize(("path", "params"), [("/search", {"q": "great album " * 1_500}),
                                              ("/recommend", {"user": "u" * 20_000, "k": 3})])
def test_a_rejected_value_is_quoted_back_cut_short_not_whole(client, path, params):
    response = client.get(path, params=params)
    assert response.status_code in (404, 422)
    assert len(response.content) < 500 and "characters)" in response.json()["detail"]


def test_a_model_without_review_text_refuses_similar_and_search_with_409(pop_client, served):
    for path, params in (("/similar", {"item": served.data.item_ids[0]}), ("/search", {"q": "jazz"})):
        response = pop_client.get(path, params=params)
        assert response.status_code == 409 and "reads no review text" in response.json()["detail"]
    body = pop_client.get("/recommend", params={"user": a_user_with_reviews(served), "k": 3}).json()
    assert len(body["items"]) == 3 and all(it["reason"] is None for it in body["items"])


def test_an_item_without_training_reviews_has_no_profile_to_compare(client, served):
    missing = np.flatnonzero(~served.profiles.item_has_reviews)
    if not len(missing):
        pytest.skip("every item of the fixture has a training review")
    response = client.get("/similar", params={"item": served.data.item_ids[int(missing[0])]})
    assert response.status_code == 409 and "no training review" in response.json()["detail"]


def test_search_is_off_with_a_reason_when_the_caches_encoder_has_other_weights(serve_project, tmp_path):
    other = Path(shutil.copytree(serve_project.encoder, tmp_path / "other_encoder"))
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    model.save_pretrained(other)
    served = load_served(serve_project.model("bert_rs"), serve_project.prepared, encoder_dir=other)
    response = TestClient(create_app(served)).get("/search", params={"q": "jazz"})
    assert response.status_code == 409 and "other weights" in response.json()["detail"]


# ---------------------------------------------------------------- loading: mismatches, anywhere, the CLI


def test_a_cache_other_than_the_trained_one_is_refused_before_serving(serve_project):
    with pytest.raises(DataError, match="not the one this model was trained with.*pooling"):
        load_served(serve_project.model("bert_rs"), serve_project.prepared, cache=serve_project.other_cache)


def test_prepared_data_other_than_the_trained_one_is_refused(serve_project, tmp_path):
    other = Path(shutil.copytree(serve_project.prepared, tmp_path / "prepared"))
    stats = (other / "stats.json").read_text().replace('"fingerprint": "', '"fingerprint": "x')
    (other / "stats.json").write_text(stats)
    with pytest.raises(DataError, match="trained on prepared data"):
        load_served(serve_project.model("bert_rs"), other)


def test_the_model_folder_works_from_another_working_folder(serve_project, tmp_path, monkeypatch):
    """run.json records the cache relative to the project root; it is found from the model folder's project."""
    monkeypatch.chdir(tmp_path)
    served = load_served(serve_project.model("bert_rs").resolve())
    assert served.cache_path.resolve() == serve_project.cache.resolve()
    assert served.data.root.resolve() == serve_project.prepared.resolve()


def test_a_missing_cache_names_every_path_looked_up(serve_project, tmp_path, monkeypatch):
    moved = Path(shutil.copytree(serve_project.model("bert_rs"), tmp_path / "elsewhere" / "bert_rs"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        load_served(moved, serve_project.prepared)
    message = str(error.value)
    assert ("'data/embeddings/tiny'" in message
            and str(tmp_path / "elsewhere" / "data" / "embeddings" / "tiny") in message)
    assert "--embeddings" in message
    assert load_served(moved, serve_project.prepared, cache=serve_project.cache).cache_path == serve_project.cache


@pytest.mark.parametrize("k", ["0", "-3"])
def test_recommend_cli_refuses_k_below_one(serve_project, tmp_path, monkeypatch, k):
    monkeypatch.chdir(tmp_path)
    user = load_served(serve_project.model("pop"), serve_project.prepared, search=False).data.user_ids[0]
    res = CliRunner().invoke(cli, ["recommend", "--model-dir", str(serve_project.model("pop")), "--user", user,
                                   "--k", k])
    assert res.exit_code == 2 and f"--k: must lie in 1..1000, got {k}" in res.output


@pytest.mark.parametrize("command", ["recommend", "serve"])
def test_a_params_file_named_but_missing_is_an_error_not_the_defaults(serve_project, tmp_path, monkeypatch,
                                                                       command):
    monkeypatch.chdir(tmp_path)
    model = ["--model-dir", str(serve_project.model("pop"))]
    extra = ["--user", "any"] if command == "recommend" else ["--no-search"]
    res = CliRunner().invoke(cli, [command, *model, *extra, "--params", str(tmp_path / "params.yml")])
    assert res.exit_code == 2 and f"{tmp_path / 'params.yml'}: params file not found" in res.output


def test_recommend_reads_the_list_length_from_the_params_file_it_is_given(serve_project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("recommend: {k: 2}\n")
    user = load_served(serve_project.model("pop"), serve_project.prepared, search=False).data.user_ids[0]
    res = CliRunner().invoke(cli, ["recommend", "--model-dir", str(serve_project.model("pop")), "--user", user,
                                   "--params", str(tmp_path / "mine.yaml")])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 3  # a header and two picks


def test_an_unknown_id_in_a_users_file_is_named_with_its_line(serve_project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = load_served(serve_project.model("pop"), serve_project.prepared, search=False).data.user_ids[0]
    users = tmp_path / "users.txt"
    users.write_text(f"{user}\n\nnobody\n{user}\n")
    res = CliRunner().invoke(cli, ["recommend", "--model-dir", str(serve_project.model("pop")), "--users-file",
                                   str(users), "--out", str(tmp_path / "recs.parquet")])
    assert res.exit_code == 2 and f"{users}:3: unknown user id 'nobody' (1 unknown in all)" in res.output
    assert not (tmp_path / "recs.parquet").exists()


def test_recommend_cli_runs_from_another_folder(serve_project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = load_served(serve_project.model("pop"), serve_project.prepared, search=False).data.user_ids[0]
    res = CliRunner().invoke(cli, ["recommend", "--model-dir", str(serve_project.model("bert_rs").resolve()),
                                   "--user", user, "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "text_match" in res.output and len(res.output.strip().splitlines()) == 4


def test_serve_cli_refuses_a_mismatched_cache_with_exit_2(serve_project):
    res = CliRunner().invoke(cli, ["serve", "--model-dir", str(serve_project.model("bert_rs")), "--prepared",
                                   str(serve_project.prepared), "--embeddings", str(serve_project.other_cache)])
    assert res.exit_code == 2 and "not the one this model was trained with" in res.output


def test_serve_cli_without_the_extra_names_it(serve_project, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    res = CliRunner().invoke(cli, ["serve", "--model-dir", str(serve_project.model("bert_rs"))])
    assert res.exit_code == 2 and 'pip install -e ".[serve]"' in res.output and "uvicorn" in res.output


def test_serve_cli_refuses_fewer_than_one_worker(serve_project):
    res = CliRunner().invoke(cli, ["serve", "--model-dir", str(serve_project.model("bert_rs")), "--workers", "0"])
    assert res.exit_code == 2 and "--workers: must be >= 1, got 0" in res.output


def test_serve_with_two_workers_answers_from_two_processes_as_one_process_would(serve_project, served, client):
    """Each uvicorn worker loads its own copy of the model from the settings the command exported."""
    import subprocess
    import sys

    import httpx
    import psutil

    port = free_port()
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "stages.cli", "serve", "--model-dir", str(serve_project.model("bert_rs")),
         "--prepared", str(serve_project.prepared), "--no-search", "--workers", "2", "--port", str(port)],
        cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline, health = time.time() + 240, None
        while health is None and time.time() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.5)
        assert health is not None, server.stderr.read() if server.poll() is not None else "no /health in 240 s"
        workers = [c for c in psutil.Process(server.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for user in served.data.user_ids[:6]:
            got = httpx.get(f"http://127.0.0.1:{port}/recommend", params={"user": user, "k": 5}, timeout=30)
            assert got.status_code == 200 and got.json() == client.get(
                "/recommend", params={"user": user, "k": 5}).json()
    finally:
        server.terminate()
        server.wait(timeout=60)


# -------------------------------------------------------------------------------------- the page in a browser


def _browser() -> tuple[str, str] | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        binary = shutil.which(name)
        driver = shutil.which("chromedriver")
        if binary and driver:
            return binary, driver
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_server(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    return server, thread


def headless_chrome(tmp_path: Path):
    found = _browser()
    if found is None:
        pytest.skip("no chromium + chromedriver installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1000",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(found[1]), options=options)


def test_the_page_shows_history_recommendations_with_bars_and_reasons_and_similar_items(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser = headless_chrome(tmp_path)
    port = free_port()
    server, thread = run_server(create_app(served), port)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        user = a_user_with_reviews(served)
        field = browser.find_element(By.ID, "user-input")
        field.clear()
        field.send_keys(user)
        k = browser.find_element(By.ID, "k-input")
        k.clear()
        k.send_keys("5")
        browser.find_element(By.ID, "recommend-button").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recs li.rec")) == 5)
        recs = browser.find_elements(By.CSS_SELECTOR, "#recs li.rec")
        # one bar per score part: item_model, text_match, popularity
        assert all(len(r.find_elements(By.CSS_SELECTOR, ".bar-row")) == 3 for r in recs)
        assert all("reads like a review of" in r.find_element(By.CLASS_NAME, "reason").text for r in recs)
        u = served.user_lookup[user]
        history = browser.find_elements(By.CSS_SELECTOR, "#history li")
        assert len(history) == len(served.reviews.by_user[u])
        first = recs[0].find_element(By.CLASS_NAME, "similar-button")
        target = first.get_attribute("data-item")
        first.click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#similar li")) > 0)
        assert target in browser.find_element(By.ID, "similar-to").text
        field.clear()
        field.send_keys("nobody-at-all")
        browser.find_element(By.ID, "recommend-button").click()
        wait.until(ready.visibility_of_element_located((By.ID, "error")))
        assert "unknown user 'nobody-at-all'" in browser.find_element(By.ID, "error").text
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)
