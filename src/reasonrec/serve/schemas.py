"""Typed request and response models of the serving API (they are the OpenAPI schema).

Limits live here, in one place: id lengths, candidate-list sizes, k. Requests are strict: no type
is coerced (`{"user_id": 42}`, `"k": "10"`, `"attention": 0`, `"explanations": "yes"` are 422s
that name the field), unknown fields are refused, and `context` lists exactly the bundle's context
fields with their ranges (`request_models`), so the OpenAPI document says what the server takes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

MAX_ID_LEN = 128
MAX_CANDIDATES = 1000
MAX_K = 1000
MAX_BODY_BYTES = 1 << 20           # 1 MiB: 1,000 ids of 128 characters fit with room to spare

# printable ids: no control characters (they only ever come from bugs or probes)
Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID_LEN,
                                      pattern=r"^[^\x00-\x1f\x7f]+$")]
Reasons = Literal["ready", "pending", "unavailable"]


def _whole_number(value):
    """JSON Schema counts 7.0 as an integer (and so do schema-driven clients); strict pydantic does
    not. Whole floats become ints here; strings and booleans still fail the strict check."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def IntIn(lo: int, hi: int, **field):
    """An integer in [lo, hi]. The bounds sit inside the validator so the JSON schema keeps them as
    minimum/maximum (outside, pydantic writes them as unknown ge/le keywords)."""
    return Annotated[int, Field(ge=lo, le=hi, **field), BeforeValidator(_whole_number)]


Timestamp = IntIn(0, 32503680000, description="seconds since the epoch (UTC)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScoreRequest(_Strict):
    user_id: Id
    item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_CANDIDATES,
                                        description=f"candidates to score, 1 to {MAX_CANDIDATES}")]
    timestamp: Timestamp | None = Field(None, description="when the request happens (context features: hour, "
                                                          "weekday); default now")
    context: dict | None = Field(None, description="explicit context values, e.g. {'ctx_hour': 20}; "
                                                  "replaced per bundle by `request_models`")
    explanations: bool = Field(True, description="include the explanation texts")
    attention: bool = Field(True, description="include the attention share of each input")


class RecommendRequest(_Strict):
    user_id: Id
    k: IntIn(1, MAX_K) = 10
    item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_CANDIDATES)] | None = Field(
        None, description="candidate pool; default: every item the model knows that the user has not "
                          "interacted with")
    exclude_seen: bool = Field(True, description="drop items the user interacted with from the pool")
    require_reasons: bool = Field(False, description="rank only candidates whose explanations for the user's "
                                                     "current history are written (precomputed top-N)")
    timestamp: Timestamp | None = None
    context: dict | None = None
    explanations: bool = True
    attention: bool = True


def request_models(ctx_fields: dict[str, int]) -> tuple[type[ScoreRequest], type[RecommendRequest]]:
    """ScoreRequest and RecommendRequest whose `context` is the bundle's own: one optional integer
    per context field, 0 to cardinality - 2 (the model reserves code 0 for "unknown"); anything
    else is a 422, never silently ignored or clipped."""
    fields = {name: (IntIn(0, max(card - 2, 0)) | None,
                     Field(None, description=f"0 to {max(card - 2, 0)}" + (
                         "; default: from timestamp" if name in ("ctx_hour", "ctx_weekday") else "")))
              for name, card in ctx_fields.items()}
    context = create_model("Context", __base__=_Strict, **fields)
    desc = ("context values the model reads; omitted ones default to what `timestamp` says (hour, weekday, UTC) "
            "or to unknown" if ctx_fields else "this model reads no context: only {} or null")
    score = create_model("ScoreRequest", __base__=ScoreRequest, context=(context | None, Field(None, description=desc)))
    recommend = create_model("RecommendRequest", __base__=RecommendRequest,
                             context=(context | None, Field(None, description=desc)))
    return score, recommend


class EventRequest(_Strict):
    user_id: Id
    item_id: Id = Field(..., description="must be an item of the catalog")
    rating: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] | None = None
    label: IntIn(0, 1) | None = None
    timestamp: Timestamp | None = None


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(..., description="probability of a positive label (classification) or the rating "
                                          "(regression)")
    known_item: bool = Field(..., description="the model has an embedding for this item (else OOV)")
    in_catalog: bool = Field(..., description="the item has metadata, so explanations can be written for it")
    reasons: Reasons = Field(..., description="ready: texts below; pending: queued for the LLM; unavailable")
    reasons_source: Literal["current", "interaction"] | None = Field(
        None, description="current: written for the user's current history; interaction: written for "
                          "the logged interaction of this pair (its history at that time)")
    explanations: dict[str, str | None] | None = Field(None, description="e.g. positive / negative texts")
    attention: dict[str, float] | None = Field(None, description="share of attention each input receives "
                                                                "(pos, neg, user, item, seq, context)")


class ScoreResponse(BaseModel):
    user_id: str
    known_user: bool
    history: list[str]
    task: str
    items: list[ScoredItem]


class RecommendResponse(ScoreResponse):
    k: int
    pool_size: int


class EventResponse(BaseModel):
    event_id: int
    user_id: str
    known_user: bool
    history: list[str]
    queued: bool = Field(..., description="a refresh of the user's explanations was queued")


class UserResponse(BaseModel):
    user_id: str
    known_user: bool
    history: list[str]
    interactions: int
    explanations_ready: int = Field(..., description="candidates explained for the current history")
    explanations_pending: int = Field(..., description="candidates queued for the LLM")
    explained_items: list[str] = Field(..., description="the explained candidates (current history)")
    pending_items: list[str] = Field(..., description="the candidates waiting for the LLM")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    reasons: list[str] = Field(..., description="why the service is degraded (empty when ok)")
    model: str
    users: int
    items: int
    queue_depth: int | None = Field(..., description="pending jobs; null while the state DB is unreadable")
    worker: Literal["running", "stopped", "disabled", "separate"]
    llm: str | None
    pid: int = Field(..., description="the server process that answered (several may share the port)")


class ErrorBody(BaseModel):
    error: str
    detail: list[dict] | None = None
