"""The service's JSON contract: the response models every endpoint returns (pipeline/serve/app.py) and the limits a
request must keep. The OpenAPI schema at /openapi.json is generated from these classes."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

MAX_K = 100  # longest list one request may ask for
MAX_QUERY_CHARS = 2000
SNIPPET_CHARS = 240  # a review as the page shows it: one line, at most this many characters


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong with the request, in words")


class ItemRef(BaseModel):
    item: str = Field(description="raw item id, as in the reviews")
    title: Optional[str] = Field(None, description="from item metadata, when prepare was given it")
    category: Optional[str] = None


class ReviewSnippet(BaseModel):
    user: str
    item: str
    item_title: Optional[str] = None
    rating: Optional[float] = None
    snippet: str = Field(description=f"the review text, cut to {SNIPPET_CHARS} characters")


class Reason(BaseModel):
    text: str = Field(description="why this item, in words")
    similarity: Optional[float] = Field(None, description="cosine between the two reviews' vectors")
    user_review: Optional[ReviewSnippet] = Field(None, description="the user's training review that matches best")
    item_review: Optional[ReviewSnippet] = Field(None, description="the item's training review that matches best")


class RecommendedItem(ItemRef):
    rank: int
    score: float
    parts: dict[str, float] = Field(description="score parts; they sum to the score")
    reason: Optional[Reason] = None


class RecommendResponse(BaseModel):
    user: str
    model: str
    run: str
    k: int
    items: list[RecommendedItem]


class SimilarItem(ItemRef):
    rank: int
    similarity: float = Field(description="cosine between review profiles")


class SimilarResponse(BaseModel):
    item: ItemRef
    k: int
    items: list[SimilarItem]


class SearchResponse(BaseModel):
    query: str
    k: int
    items: list[SimilarItem]


class HistoryEntry(ItemRef):
    rating: Optional[float] = None
    date: Optional[str] = Field(None, description="ISO date of the review")
    snippet: str


class HistoryResponse(BaseModel):
    user: str
    reviews: list[HistoryEntry] = Field(description="training reviews only, newest first")


class UserSummary(BaseModel):
    user: str
    train_reviews: int


class UsersResponse(BaseModel):
    total: int = Field(description="users matching the prefix")
    users: list[UserSummary]


class Health(BaseModel):
    status: str
    run: str
    model: str
    n_users: int
    n_items: int
    text_model: bool = Field(description="reads review text: /similar works and /recommend gives reasons")
    search: bool = Field(description="/search is on (the cache's encoder is loaded)")
    search_note: str
