"""Request and response models of the HTTP service (pydantic; the OpenAPI schema comes from
them), for every task's routes."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

# Strict types: JSON `true` is not the integer 1, "5" is not 5. Floats are finite
# (`allow_inf_nan=False` on every request model): NaN and Infinity answer 422.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictNumber = Annotated[float, Strict(), Field(allow_inf_nan=False)]

# Ids as in the input data: JSON integers or strings, converted to the model's id type.
Id = Annotated[StrictInt | Annotated[str, Field(min_length=1, max_length=256)],
               Field(description="an id as in the input data (integer or string)")]

MAX_K = 1000
MAX_HISTORY = 10_000
MAX_LIST = 100_000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HistoryInput(_Request):
    """Who the user is: a known `user_id`, an explicit recent `history`, or both (the history is
    then appended to the user's training history: "what they just did")."""

    user_id: Id | None = Field(None, description="a user seen in training")
    history: list[Id] | None = Field(None, max_length=MAX_HISTORY,
                                     description="item ids, oldest first (or in any order with "
                                                 "`timestamps`)")
    timestamps: list[datetime | StrictNumber] | None = Field(
        None, max_length=MAX_HISTORY,
        description="one per history item (ISO 8601 or Unix seconds); the history is ordered by "
                    "them, ties keep the given order")
    unknown_items: Literal["error", "ignore"] = Field(
        "error", description="history items not in the catalogue: 422 (error) or skipped and "
                             "listed in the response (ignore)")

    @model_validator(mode="after")
    def _who(self) -> HistoryInput:
        if self.user_id is None and not self.history:
            raise ValueError("give `user_id` (a known user) and/or a non-empty `history` of item "
                             "ids")
        if self.history is not None and len(self.history) == 0 and self.user_id is None:
            raise ValueError("`history` is empty; give at least one item id")
        if self.timestamps is not None:
            if self.history is None or len(self.timestamps) != len(self.history):
                raise ValueError(f"`timestamps` has {len(self.timestamps)} entries but `history` "
                                 f"has {len(self.history or [])}; give one timestamp per history "
                                 "item")
        return self


class RecommendRequest(HistoryInput):
    """Top-k next items for a user (known and/or from an explicit history)."""

    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: StrictBool = Field(True, description="leave out items in the user's history")
    allow: list[Id] | None = Field(
        None, max_length=MAX_LIST, description="only recommend from these items")
    deny: list[Id] | None = Field(
        None, max_length=MAX_LIST, description="never recommend these items")
    exact: StrictBool = Field(
        False, description="exact scan of the whole catalogue instead of the ANN index")
    retrieval: Literal["single", "knn_embed", "ada"] | None = Field(
        None, description="single: one user vector (ANN); knn_embed: the user's interest "
        "mixture, candidates allotted per interest; ada: multi-round retrieval (a run from "
        "`userseq ada fit`; k must be a multiple of its rounds). Default: the run's "
        "retrieval.mode")


class EmbedRequest(HistoryInput):
    """The user vector after the given history (the model's state after the last event)."""


MAX_POSTS = 1000
MAX_POST_CHARS = 20_000


class ClassifyRequest(_Request):
    """One user's sequence for a detector run: edit events (`items` + `timestamps`) for event
    detectors, or `posts` for text detectors."""

    user_id: Id | None = Field(
        None, description="the user's name (echoed; event detectors use it for the own-user-page "
                          "feature, e.g. 'User:<name>')")
    items: list[Id] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY,
        description="event detectors: page/item ids of the user's events")
    timestamps: list[datetime | StrictNumber] | None = Field(
        None, max_length=MAX_HISTORY,
        description="event detectors: one per item (ISO 8601 or Unix seconds); events are ordered "
                    "by them, ties keep the given order, and the response counts the pairs that "
                    "were out of order")
    posts: list[Annotated[str, Field(max_length=MAX_POST_CHARS)]] | None = Field(
        None, min_length=1, max_length=MAX_POSTS,
        description="text detectors: the user's posts, oldest first")
    first_k: StrictInt | None = Field(
        None, ge=1, le=MAX_HISTORY,
        description="score from the first k events/posts only (early detection)")

    @model_validator(mode="after")
    def _one_sequence(self) -> ClassifyRequest:
        if (self.items is None) == (self.posts is None):
            raise ValueError("give exactly one of `items` (+ `timestamps`, event detectors) or "
                             "`posts` (text detectors)")
        n_items = None if self.items is None else len(self.items)
        if self.timestamps is not None and len(self.timestamps) != n_items:
            raise ValueError(f"`timestamps` has {len(self.timestamps)} entries but `items` has "
                             f"{len(self.items or [])}; give one timestamp per item")
        if self.posts is not None:
            empty = [i for i, p in enumerate(self.posts) if not p.strip()]
            if empty:
                raise ValueError(f"posts {empty[:10]} are empty; every post needs some text")
        return self


class ClassifyResponse(BaseModel):
    user_id: Id | None
    model: str = Field(description="the detector's model")
    score: float = Field(description="P(malicious)")
    flagged: bool = Field(description="score >= threshold")
    threshold: float = Field(description="decision threshold chosen on validation users")
    threshold_for: str = Field(
        description="the prefix length the threshold was chosen for ('all' or k)")
    length: int = Field(description="events/posts received")
    used: int = Field(
        description="events/posts the score was computed from (first_k, the model's limit)")
    reordered: int = Field(
        0, description="adjacent event pairs whose timestamps were out of order (sorted)")


CTR_MAX_HISTORY = 100_000  # CTR models read long histories (SIM, TWIN, SDIM, DARE)
MAX_CANDIDATES = 100_000


class ScoreRequest(_Request):
    """POST /score: one user (a training user's stored history) or an explicit history, and the
    candidate items, for the CTR run given to `userseq serve --ctr` (or `userseq ctr serve`)."""

    items: list[Id] = Field(..., min_length=1, max_length=MAX_CANDIDATES,
                            description="candidate item ids")
    user: Id | None = Field(None, description="a training user: their stored history is used "
                                              "unless `history` is given")
    history: list[Id] | None = Field(None, max_length=CTR_MAX_HISTORY,
                                     description="item ids, oldest first")
    history_values: list[StrictNumber] | None = Field(
        None, max_length=CTR_MAX_HISTORY, description="the rating/label of each history event")
    history_timestamps: list[StrictNumber] | None = Field(
        None, max_length=CTR_MAX_HISTORY, description="Unix seconds, one per history event")
    timestamp: StrictNumber | None = Field(
        None, description="time of the impression: history events must be earlier")
    context: dict[str, StrictNumber] | None = Field(
        None, description="the model's context features")

    @model_validator(mode="after")
    def _who(self) -> ScoreRequest:
        if self.user is None and self.history is None:
            raise ValueError("give `user` (a training user) or `history` (item ids, oldest first)")
        return self


class Score(BaseModel):
    item: Id
    probability: float = Field(description="predicted click probability")


class ScoreResponse(BaseModel):
    model: str = Field(description="the CTR model (din, sim, twin, sdim, dare, ...)")
    scores: list[Score] = Field(description="one per candidate, in the order they were sent")


class CTRHealth(BaseModel):
    status: Literal["ok"]
    model: str
    items: int
    users: int


class ScoredItem(BaseModel):
    item_id: Id
    score: float
    title: str | None = None
    genres: list[str] | None = None


class RecommendResponse(BaseModel):
    user_id: Id | None
    known_user: bool = Field(description="the user id was seen in training")
    history_length: int = Field(description="events the recommendation was computed from")
    k: int
    items: list[ScoredItem]
    ignored_items: list[Id] = Field(
        default_factory=list, description="unknown history items skipped")
    index: str = Field(description="how candidates were found: the index kind, or 'exact'")
    retrieval: str = Field("single", description="the retrieval mode that answered")


class EmbedResponse(BaseModel):
    user_id: Id | None
    known_user: bool
    history_length: int
    dim: int
    embedding: list[float]
    ignored_items: list[Id] = Field(default_factory=list)


class SimilarResponse(BaseModel):
    id: Id
    k: int
    metric: str = Field(description="similarity measure (cosine of the embeddings)")
    index: str
    items: list[ScoredItem] | None = None
    users: list[ScoredUser] | None = None


class ScoredUser(BaseModel):
    user_id: Id
    score: float


class ItemInfo(BaseModel):
    item_id: Id
    title: str | None = None
    genres: list[str] | None = None
    count: int = Field(description="events with this item in the training data")


class UserInfo(BaseModel):
    user_id: Id
    history_length: int
    history: list[ItemInfo] = Field(description="the most recent events, oldest first")


class IdList(BaseModel):
    total: int
    ids: list[Id]


class ItemSearch(BaseModel):
    total: int
    items: list[ItemInfo]


class MapPoint(BaseModel):
    item_id: Id
    x: float
    y: float
    genre: str | None = None
    title: str | None = None


class MapResponse(BaseModel):
    method: str
    explained_variance: list[float]
    points: list[MapPoint]


class Health(BaseModel):
    status: Literal["ok"]
    items: int
    users: int


class Info(BaseModel):
    model: dict[str, Any]
    data_fingerprint: str | None
    metrics: dict[str, Any] | None
    index: dict[str, Any]
    items: int
    users: int
    run_dir: str
    userseq_version: str
    item_metadata: bool = Field(description="titles/genres are available")
    detector: dict[str, Any] | None = Field(
        None, description="the detector run answering POST /classify (`--detector`), if any")
    ctr: dict[str, Any] | None = Field(
        None, description="the CTR run answering POST /score and /rank (`--ranker`), if any")
    ranker: dict[str, Any] | None = Field(
        None, description="POST /rank: the ranking run and its item overlap with the retrieval "
                          "run (`--ranker`), if any")
    concepts: dict[str, Any] | None = Field(
        None, description="GET /explain: the concept map (null until loaded or fitted)")


class ErrorResponse(BaseModel):
    detail: Any = Field(description="what was wrong with the request")
    message: str | None = Field(None, description="one-line summary")


SimilarResponse.model_rebuild()


MAX_EVENTS = 1000


class EventsRequest(_Request):
    """New events of one user, appended to their streaming state (recurrent encoders)."""

    events: list[Id] = Field(min_length=1, max_length=MAX_EVENTS,
                             description="item ids, oldest first")
    k: int = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: bool = Field(True, description="leave out items the user has seen (training "
                                                 "history and appended events)")


class EventsResponse(BaseModel):
    user_id: Id
    known_user: bool = Field(description="the user id was seen in training (their state starts "
                                         "from the training history)")
    created: bool = Field(description="this request created the user's streaming state")
    n_events: int = Field(description="events in the user's state after this request")
    appended: int
    k: int
    items: list[ScoredItem]
    index: str



MAX_RANK_CANDIDATES = 10_000  # explicit candidates or retrieved ones scored by the ranker at once


class RankRequest(HistoryInput):
    """POST /rank: two-stage recommendation. Stage 1 takes the explicit `candidates` or retrieves
    `retrieve` items with the next-item run; stage 2 scores them with the ranking (CTR) run; the
    top `k` by ranking score come back with both scores."""

    candidates: list[Id] | None = Field(
        None, min_length=1, max_length=MAX_RANK_CANDIDATES,
        description="item ids to rank (instead of retrieving them)")
    retrieve: StrictInt | None = Field(
        None, ge=1, le=MAX_K,
        description="retrieve this many candidates with the retrieval run (default 100 when "
                    "`candidates` is not given)")
    k: StrictInt = Field(10, ge=1, le=MAX_RANK_CANDIDATES, description="items to return")
    exclude_seen: StrictBool = Field(
        True, description="retrieval leaves out items in the user's history")

    @model_validator(mode="after")
    def _one_source(self) -> RankRequest:
        if self.candidates is not None and self.retrieve is not None:
            raise ValueError("give `candidates` (item ids to rank) or `retrieve` (how many to "
                             "retrieve), not both")
        if self.candidates is not None:
            counts = Counter(str(c) for c in self.candidates)
            dup = sorted(c for c, n in counts.items() if n > 1)
            if dup:
                raise ValueError(f"`candidates` has duplicate ids {dup[:10]}; send each item once")
        return self


class RankedItem(BaseModel):
    item_id: Id
    rank_score: float = Field(description="the ranking (CTR) run's click probability")
    retrieval_score: float = Field(
        description="the retrieval run's score (dot product of the user and item embeddings)")
    retrieval_rank: int = Field(description="1-based position by retrieval score among the "
                                            "candidates")
    title: str | None = None
    genres: list[str] | None = None


class RankResponse(BaseModel):
    user_id: Id | None
    known_user: bool = Field(description="the user id was seen by the retrieval run")
    history_length: int = Field(description="events the retrieval embedding was computed from")
    ranker_history: str = Field(description="what the ranker read: the ranking run's stored "
                                            "history of the user, or the retrieval stage's "
                                            "history (stored + posted)")
    source: str = Field(description="'candidates' (explicit) or 'retrieved'")
    candidates: int = Field(description="candidates scored by the ranker")
    k: int
    ranker: str = Field(description="the ranking run's model (din, sdim, dare, ...)")
    items: list[RankedItem]
    ignored_items: list[Id] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(description="retrieval and ranking stage times")
