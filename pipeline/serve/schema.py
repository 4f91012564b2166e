"""The service's JSON contract: the response models every endpoint returns (pipeline/serve/app.py) and the limits a
request must keep. The OpenAPI schema at /openapi.json is generated from these classes."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

MAX_K = 100  # longest list one request may ask for
MAX_QUERY_CHARS = 2000
SNIPPET_CHARS = 240  # a review as the page shows it: one line, at most this many characters


class ErrorResponse(BaseModel):
    """The body of every 4xx response."""

    detail: str = Field(description="what is wrong with the request, in words")


class ItemRef(BaseModel):
    """An item: its raw id and, where metadata gave them, its title and category."""

    item: str = Field(description="raw item id, as in the reviews")
    title: Optional[str] = Field(None, description="from item metadata, when prepare was given it")
    category: Optional[str] = None


class ReviewSnippet(BaseModel):
    """A training review as the page shows it: who wrote it, of what, its rating and a snippet."""

    user: str
    item: str
    item_title: Optional[str] = None
    rating: Optional[float] = None
    snippet: str = Field(description=f"the review text, cut to {SNIPPET_CHARS} characters")


class Reason(BaseModel):
    """Why an item was recommended: the user's and the item's training reviews that read most alike."""

    text: str = Field(description="why this item, in words")
    similarity: Optional[float] = Field(None, description="cosine between the two reviews' vectors")
    user_review: Optional[ReviewSnippet] = Field(None, description="the user's training review that matches best")
    item_review: Optional[ReviewSnippet] = Field(None, description="the item's training review that matches best")


class RecommendedItem(ItemRef):
    """One recommended item: its rank, score, score parts and, for text models, a reason."""

    rank: int
    score: float
    parts: dict[str, float] = Field(description="score parts; they sum to the score")
    reason: Optional[Reason] = None


class RecommendResponse(BaseModel):
    """GET /recommend: a user's top-k new items."""

    user: str
    model: str
    run: str
    k: int
    items: list[RecommendedItem]


class SimilarItem(ItemRef):
    """An item ranked by the cosine of its review profile to a query."""

    rank: int
    similarity: float = Field(description="cosine between review profiles")


class SimilarResponse(BaseModel):
    """GET /similar: the items whose review profiles are nearest to one item's."""

    item: ItemRef
    k: int
    items: list[SimilarItem]


class SearchResponse(BaseModel):
    """GET /search: the items whose review profiles are nearest to the query text's vector."""

    query: str
    k: int
    items: list[SimilarItem]


class HistoryEntry(ItemRef):
    """One training review of a user, with its item, rating and date."""

    rating: Optional[float] = None
    date: Optional[str] = Field(None, description="ISO date of the review")
    snippet: str


class HistoryResponse(BaseModel):
    """GET /history: a user's training reviews, newest first."""

    user: str
    reviews: list[HistoryEntry] = Field(description="training reviews only, newest first")


class UserSummary(BaseModel):
    """A user id and the number of training reviews it has."""

    user: str
    train_reviews: int


class UsersResponse(BaseModel):
    """GET /users: user ids matching a prefix, most training reviews first."""

    total: int = Field(description="users matching the prefix")
    users: list[UserSummary]


class Health(BaseModel):
    """GET /health: the run served, its sizes, and which endpoints are on."""

    status: str
    run: str
    model: str
    n_users: int
    n_items: int
    text_model: bool = Field(description="reads review text: /similar works and /recommend gives reasons")
    search: bool = Field(description="/search is on (the cache's encoder is loaded)")
    search_note: str
