"""The hubs, one per wire: the WebSocket hub (:mod:`.ws_hub`, needs ``websockets``), the gRPC hub
(:mod:`.grpc_hub` with its codec :mod:`.grpc_codec`, needs ``grpcio`` and ``protobuf``; the
generated code stays in ``remote/_proto``) and what both share (:mod:`.hub_base`: tokens,
registration rules, liveness, the router). Nothing is imported here, so each extra loads only
with its hub; the public paths are ``async_task_system.remote.hub`` and ``.grpc_hub``.
"""
