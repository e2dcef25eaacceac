"""Envoy API stubs from the maintained `xds-protos` package (see proto/README.md)."""

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as processing_mode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2 as rlqs
from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc as rlqs_grpc
from envoy.type.v3 import http_status_pb2 as http_status
from envoy.type.v3 import ratelimit_strategy_pb2 as ratelimit_strategy
from envoy.type.v3 import token_bucket_pb2 as token_bucket

BodyMode = processing_mode.ProcessingMode.BodySendMode
HeaderMode = processing_mode.ProcessingMode.HeaderSendMode

__all__ = [
    "BodyMode",
    "HeaderMode",
    "core",
    "ext_proc",
    "ext_proc_grpc",
    "http_status",
    "processing_mode",
    "ratelimit_strategy",
    "rlqs",
    "rlqs_grpc",
    "token_bucket",
]
