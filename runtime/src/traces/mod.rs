//! OpenTelemetry traces of a running server, exported over OTLP/HTTP (protobuf) in batches.
//!
//! Rules:
//! 1. Off unless an endpoint is configured: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
//!    it is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended). `OTEL_SDK_DISABLED=true`
//!    or `OTEL_TRACES_EXPORTER=none` turn it off whatever else is set; another exporter or
//!    a protocol other than `http/protobuf` is refused at start-up (exit code 2). When off,
//!    no span is built and a request pays one branch per layer, no allocation
//!    ([`Telemetry::from_env`]).
//! 2. The service name is `OTEL_SERVICE_NAME`, else `service.name` in
//!    `OTEL_RESOURCE_ATTRIBUTES`, else the spec's server name. The SDK honours the rest:
//!    `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`,
//!    `_TIMEOUT`, `OTEL_RESOURCE_ATTRIBUTES`.
//! 3. Spans: the HTTP server span (bmm-middleware's `otel`), one MCP server span per
//!    JSON-RPC request or notification ([`mcp`]), and one client span per upstream HTTP
//!    attempt of an HTTP tool (`upstream`), which carries `traceparent` (and `tracestate`)
//!    to that upstream only.
//! 4. No token, secret, header value, argument value or client-chosen text is ever an
//!    attribute, a span name or an event: method names come from a fixed list (`_OTHER`
//!    otherwise), tool and prompt names and resource URIs only when the spec declares them,
//!    error types are JSON-RPC codes or fixed words, and span status descriptions stay
//!    empty (an error message can quote an argument). The only request values recorded are
//!    the JSON-RPC id (at most 128 bytes), the session id (which the server issued and bound
//!    to its caller) and the protocol version (one the server knows).
//! 5. The subject (`sub`) is not recorded: traces often go to a shared backend with wider
//!    access and longer retention than the audit log, which is the place for who called
//!    what.
//! 6. Batches are flushed when the server stops ([`Telemetry::shutdown`]).
//! 7. Traces cover the HTTP transport: a server on `--stdio` exports none.

pub mod mcp;
mod setup;
pub(crate) mod upstream;

pub use setup::Telemetry;
