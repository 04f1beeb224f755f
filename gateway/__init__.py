"""The public gateway, the only process users reach.

Owns the edge: API keys and scopes, request ids, body limits, the routing table (service -> ready replicas),
the predict coalescers, the upstream client to internal processes, the merged OpenAPI document, `/metrics` for
the whole platform, and every transport over one data plane: REST `/api/v1`, V2 REST `/v2`, V2 gRPC, the seed's
console API and the web console. It imports only `shared`: it talks to the registry, the replicas and the workers
over HTTP and Redis, never by importing them.
"""
