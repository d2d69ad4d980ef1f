"""Python client of the Exemplar service (`pip install ./client`): see `exemplar_client.client`."""

from exemplar_client.client import AsyncClient, Client, ExemplarError, results_of
from exemplar_client.models import (
    CompareRequest,
    Comparison,
    Example,
    ExplainRequest,
    Explanation,
    IndexInfo,
    Job,
    JobError,
    Message,
    Options,
    Query,
)

__all__ = [
    "AsyncClient",
    "Client",
    "CompareRequest",
    "Comparison",
    "Example",
    "ExemplarError",
    "ExplainRequest",
    "Explanation",
    "IndexInfo",
    "Job",
    "JobError",
    "Message",
    "Options",
    "Query",
    "results_of",
]
