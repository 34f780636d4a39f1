//! The tracer provider built from the standard `OTEL_*` environment (rules 1, 2 and 6 of
//! [`crate::traces`]).

use bmm_middleware::Traces;
use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Trace export, configured from the environment; flush it with [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the exporter when an OTLP endpoint is configured (`Ok(None)`: traces are off).
    /// `env` reads the variables this function decides on; the SDK reads its own (sampler,
    /// batch, headers, timeout) from the process environment. `service` is the name used
    /// when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` gives one.
    pub fn from_env(
        service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other} is not supported: this server exports traces with otlp (or none)"
                ));
            }
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if let Some(protocol) =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            && protocol != "http/protobuf"
        {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: this server exports traces over http/protobuf"
            ));
        }
        let url = url::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                "the OTLP traces endpoint is not an http(s) URL (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)".to_owned()
            })?;
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
        let named_in_attributes = var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        });
        let mut resource = Resource::builder();
        match var("OTEL_SERVICE_NAME") {
            Some(name) => resource = resource.with_service_name(name),
            None if !named_in_attributes => {
                resource = resource.with_service_name(service.to_owned());
            }
            None => {}
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        // Scheme and host only: a URL can carry credentials in its user-info or path.
        tracing::info!(
            scheme = url.scheme(),
            host = url.host_str().unwrap_or_default(),
            "exporting OpenTelemetry traces"
        );
        Ok(Some(Self { provider }))
    }

    /// The tracer every layer shares.
    pub fn traces(&self) -> Traces {
        let scope = InstrumentationScope::builder("bmm-runtime")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Traces::new(self.provider.tracer_with_scope(scope))
    }

    /// Exports what is still batched and stops the exporter (blocks for at most the
    /// export timeout). Errors are logged, never fatal.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the last traces could not be exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_configured() {
        assert!(matches!(Telemetry::from_env("demo", env(&[])), Ok(None)));
        assert!(matches!(
            Telemetry::from_env(
                "demo",
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                    ("OTEL_SDK_DISABLED", "true")
                ])
            ),
            Ok(None)
        ));
        assert!(matches!(
            Telemetry::from_env(
                "demo",
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                    ("OTEL_TRACES_EXPORTER", "none")
                ])
            ),
            Ok(None)
        ));
        let on = Telemetry::from_env(
            "demo",
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]),
        );
        assert!(matches!(on, Ok(Some(_))));
        if let Ok(Some(t)) = on {
            t.shutdown();
        }
    }

    #[test]
    fn unsupported_exporters_and_protocols_are_refused() {
        for pairs in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ][..],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")][..],
        ] {
            assert!(
                Telemetry::from_env("demo", env(pairs)).is_err(),
                "{pairs:?}"
            );
        }
    }
}
