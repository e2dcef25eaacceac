"""Decision records: why a request went where it went.

For a sampled request, the scheduler keeps what each profile did — the candidates it started
with, what each filter kept, each scorer's raw scores and weight, the picker's choice and
fallbacks — with the admission outcome, the P/D decision and timings, in a bounded ring buffer
that the metrics port serves as JSON and as a live web view.

Recording costs almost nothing on the hot path: a record keeps references to the lists the
scheduler already builds (kept endpoints, score lists, totals) and turns them into names and
numbers only when someone asks (`to_json`). A request that is not sampled gets no record at all,
and the scheduler only checks `record is not None`."""

from epp.explain.records import (
    DecisionRecord,
    DecisionRecorder,
    EndpointLike,
    ProfileRecord,
    RecordOptions,
    bounded_id,
    clip,
)

__all__ = [
    "DecisionRecord",
    "DecisionRecorder",
    "EndpointLike",
    "ProfileRecord",
    "RecordOptions",
    "bounded_id",
    "clip",
]
