//! A test OpenTelemetry collector: OTLP/HTTP with protobuf bodies (`POST /v1/traces`,
//! `ExportTraceServiceRequest`) on a loopback port, keeping every span it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

use crate::backends::{bind_loopback, spawn_http, Backend, Handler, RecordedRequest, Recorder};

/// Span kinds as OTLP numbers them.
pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

/// One span as the collector received it; ids in lower-case hex, attributes as text.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
}

impl CollectedSpan {
    /// An attribute's value as text (`-` when absent, so that a failed comparison says so).
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("-", String::as_str)
    }
}

/// The spans a collector received, in arrival order.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<CollectedSpan>>>);

impl Spans {
    pub fn all(&self) -> Vec<CollectedSpan> {
        self.0.lock().expect("spans lock").clone()
    }

    /// Waits until at least `count` spans arrived, or `timeout` passed; returns what arrived
    /// either way, so the caller's assertion shows what was seen.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<CollectedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.all().len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.all()
    }
}

/// Starts the collector. Every export request is also recorded on the returned backend.
pub async fn collector() -> (Backend, Spans) {
    let recorder = Recorder::default();
    let spans = Spans::default();
    let handler_recorder = recorder.clone();
    let handler_spans = spans.clone();
    let handler: Handler = Arc::new(move |request| {
        let recorder = handler_recorder.clone();
        let spans = handler_spans.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            let request = http::Request::from_parts(parts, ());
            recorder.push(RecordedRequest::new(&request, body.len()));
            let answer = match ExportTraceServiceRequest::decode(body) {
                Ok(export) if request.uri().path() == "/v1/traces" => {
                    spans.0.lock().expect("spans lock").extend(flatten(export));
                    StatusCode::OK
                }
                _ => StatusCode::BAD_REQUEST,
            };
            let reply = ExportTraceServiceResponse::default().encode_to_vec();
            Ok(Response::builder()
                .status(answer)
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(reply)).boxed())
                .expect("valid response"))
        })
    });
    (
        spawn_http(bind_loopback().await, None, false, recorder, handler),
        spans,
    )
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service_name = attributes(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(CollectedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    spans
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
                Some(Value::StringValue(text)) => text.clone(),
                Some(Value::IntValue(number)) => number.to_string(),
                Some(Value::BoolValue(flag)) => flag.to_string(),
                Some(Value::DoubleValue(number)) => number.to_string(),
                other => format!("{other:?}"),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
