"""The HTTP service: an app factory that receives a loaded model (no globals read at import) and the JSON contract.

    app = create_app(load_served("data/models/bert_rs"))      # `bertrs serve` runs this under uvicorn

Endpoints (OpenAPI docs at /docs, the schema at /openapi.json):
    GET /recommend?user=ID&k=10   top-K new items with score parts and, for text models, a reason in words
    GET /similar?item=ID&k=10     nearest items by review text (the cache's FAISS index over item profiles)
    GET /search?q=TEXT&k=10       cold start: the query text embedded by the cache's encoder, items ranked by profile
    GET /history?user=ID          the user's training reviews (what the page shows next to the list)
    GET /users?prefix=&limit=     user ids to choose from
    GET /health                   model, sizes and which endpoints are on
    GET /                         the page (static HTML + JS, no build step)

Handlers that only look up and score (a few milliseconds) are `async`, so they run on the event loop without a
thread hop; /search runs the encoder and is a plain function, which FastAPI runs in its thread pool.

Every bad request is a 4xx whose body is `{"detail": "<what is wrong>"}`: unknown ids 404, a bad k or an empty
query 422, an endpoint this model cannot serve 409. The response contract is pipeline/serve/schema.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from pipeline.embeddings import index as item_index
from pipeline.ranking.evaluation.evaluate import model_device
from pipeline.ranking.recommend import top_k
from pipeline.serve.model import ServedModel
from pipeline.serve.schema import (
    MAX_K, MAX_QUERY_CHARS, ErrorResponse, Health, HistoryEntry, HistoryResponse, ItemRef, RecommendResponse,
    SearchResponse, SimilarItem, SimilarResponse, UserSummary, UsersResponse,
)

STATIC = Path(__file__).parent / "static"


# ------------------------------------------------------------------------------------------------------- helpers


def _rating(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


ECHO_CHARS = 80  # of a rejected value, quoted back in an error: enough to recognise it, never the whole payload


def echo(value: object) -> str:
    """repr of a rejected request value, cut to ECHO_CHARS (a 100 KB query is not sent back whole)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(str(value)):,} characters)"


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        got = e.get("input")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" + (f" (got {echo(got)})" if got is not None else ""))
    return "; ".join(parts)


def create_app(served: ServedModel) -> FastAPI:
    """The ASGI app for one loaded model; handlers read only `served`."""
    data, reviews = served.data, served.reviews
    model = served.checkpoint.model
    app = FastAPI(
        title="BERT-RS",
        description="Review-aware recommendations: top-K with score parts and reasons, similar items, text search.",
        version="1",
        responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_message(error)})

    # built once: a request only indexes these
    item_refs = [
        {"item": data.item_ids[i], "title": data.item_titles[i] if data.item_titles else None,
         "category": data.item_categories[i] if data.item_categories else None}
        for i in range(data.n_items)
    ]
    ratings = [_rating(r) for r in reviews.ratings]
    model.eval()
    device = model_device(model)

    def item_ref(i: int) -> dict:
        return item_refs[i]

    def user_index(user: str) -> int:
        u = served.user_lookup.get(user.strip())
        if u is None:
            raise HTTPException(404, f"unknown user {echo(user)}: not among the {data.n_users} users of the "
                                     "prepared data")
        return u

    def item_idx(item: str) -> int:
        i = served.item_lookup.get(item.strip())
        if i is None:
            raise HTTPException(404, f"unknown item {echo(item)}: not among the {data.n_items} items of the "
                                     "prepared data")
        return i

    def review(row: int) -> dict:
        """A training review as a `ReviewSnippet` (plain dicts: the response model validates them once)."""
        i = int(reviews.items[row])
        return {"user": data.user_ids[int(reviews.users[row])], "item": data.item_ids[i],
                "item_title": item_refs[i]["title"], "rating": ratings[row], "snippet": reviews.snippets[row]}

    def reasons(u: int, picked: np.ndarray) -> list[Optional[dict]]:
        """A `Reason` per picked item: the user's and the item's training reviews whose vectors agree best."""
        if reviews.vectors is None:
            return [None] * len(picked)
        mine = reviews.by_user.get(u)
        if mine is None:
            return [{"text": "You have no training review yet, so this pick comes from what similar users chose."}
                    ] * len(picked)
        my_vectors = reviews.vectors[mine]  # (user reviews, dim), gathered once per request
        out = []
        for i in picked:
            theirs = reviews.by_item.get(int(i))
            if theirs is None:
                out.append({"text": "Nobody has reviewed this item in the training data; it comes from what users "
                                    "like you chose, not from its text."})
                continue
            sims = my_vectors @ reviews.vectors[theirs].T  # (user reviews, item reviews)
            a, b = divmod(int(sims.argmax()), sims.shape[1])  # the first best pair, row-major
            yours, its = review(int(mine[a])), review(int(theirs[b]))
            named = its["item_title"] or data.item_label(int(i))
            text = (f'Your review of {yours["item_title"] or yours["item"]} ("{yours["snippet"][:80]}") reads like '
                    f'a review of {named} ("{its["snippet"][:80]}"): cosine {float(sims[a, b]):.2f}.')
            out.append({"text": text, "similarity": float(sims[a, b]), "user_review": yours, "item_review": its})
        return out

    def nearest(query: np.ndarray, k: int, exclude: int | None = None) -> list[SimilarItem]:
        """Items by cosine to `query` among items with a training review (the others have only a fallback)."""
        profiles = served.profiles
        excluded = int((~profiles.item_has_reviews).sum()) + (exclude is not None)
        scores, found = item_index.search(served.index, query[None, :], k + excluded, metric="cosine")
        out = []
        for score, i in zip(scores[0], found[0]):
            if i < 0 or i == exclude or not profiles.item_has_reviews[i]:
                continue
            out.append(SimilarItem(rank=len(out) + 1, similarity=float(score), **item_ref(int(i))))
            if len(out) == k:
                break
        return out

    def require_text(endpoint: str) -> None:
        if served.profiles is None:
            raise HTTPException(409, f"{endpoint}: model {served.checkpoint.spec.model} reads no review text; "
                                     "/similar and /search need a text model (one trained on an embedding cache)")

    k_query = Query(10, ge=1, le=MAX_K, description=f"list length, 1..{MAX_K}")

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", run=served.run, model=served.checkpoint.spec.model, n_users=data.n_users,
                      n_items=data.n_items, text_model=served.is_text_model, search=served.encode is not None,
                      search_note=served.search_note)

    @app.get("/recommend", response_model=RecommendResponse)
    async def recommend_items(user: str = Query(..., min_length=1, description="raw user id"), k: int = k_query):
        u = user_index(user)
        picks = top_k(model, np.asarray([u]), k, served.known, served.popular, served.candidates,
                      served.checkpoint.profiles, served.index, device)
        ranks = np.flatnonzero(picks.items[0] >= 0)
        picked = picks.items[0, ranks]
        parts = {name: value[0, ranks].tolist() for name, value in picks.parts.items()}
        scores = picks.scores[0, ranks].tolist()
        items = [
            {**item_refs[i], "rank": int(r) + 1, "score": scores[n], "reason": why,
             "parts": {name: value[n] for name, value in parts.items()}}
            for n, (r, i, why) in enumerate(zip(ranks, picked.tolist(), reasons(u, picked)))
        ]
        return {"user": data.user_ids[u], "model": served.checkpoint.spec.model, "run": served.run, "k": k,
                "items": items}

    @app.get("/similar", response_model=SimilarResponse)
    async def similar(item: str = Query(..., min_length=1, description="raw item id"), k: int = k_query):
        require_text("/similar")
        i = item_idx(item)
        if not served.profiles.item_has_reviews[i]:
            raise HTTPException(409, f"item {item!r} has no training review, so it has no review profile to compare")
        return SimilarResponse(item=ItemRef(**item_ref(i)), k=k, items=nearest(served.profiles.items[i], k, i))

    @app.get("/search", response_model=SearchResponse)
    def search(q: str = Query(..., max_length=MAX_QUERY_CHARS, description="what you want, in words"),
               k: int = k_query):
        if not q.strip():
            raise HTTPException(422, "q: the query text is empty; describe what you are looking for")
        require_text("/search")
        if served.encode is None:
            raise HTTPException(409, f"/search is off: {served.search_note}")
        with torch.inference_mode():
            vector = np.asarray(served.encode([q.strip()]), dtype=np.float32)[0]
        return SearchResponse(query=q.strip(), k=k, items=nearest(vector, k))

    @app.get("/history", response_model=HistoryResponse)
    async def history(user: str = Query(..., min_length=1, description="raw user id"),
                limit: int = Query(50, ge=1, le=500, description="most reviews to return")):
        u = user_index(user)
        rows = reviews.by_user.get(u, np.zeros(0, np.int64))
        rows = rows[np.argsort(-reviews.times[rows], kind="stable")][:limit]
        entries = [
            HistoryEntry(**item_ref(int(reviews.items[r])), rating=_rating(reviews.ratings[r]),
                         date=dt.datetime.fromtimestamp(int(reviews.times[r]), dt.timezone.utc).date().isoformat(),
                         snippet=reviews.snippets[r])
            for r in rows
        ]
        return HistoryResponse(user=data.user_ids[u], reviews=entries)

    train_counts = np.bincount(reviews.users, minlength=data.n_users)
    by_activity = np.argsort(-train_counts, kind="stable")

    @app.get("/users", response_model=UsersResponse)
    async def users(prefix: str = Query("", max_length=200), limit: int = Query(50, ge=1, le=1000)):
        matching = [int(u) for u in by_activity if data.user_ids[u].startswith(prefix.strip())]
        return UsersResponse(total=len(matching), users=[
            UserSummary(user=data.user_ids[u], train_reviews=int(train_counts[u])) for u in matching[:limit]])

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
