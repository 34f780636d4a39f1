//! The generator on a 500-tool spec: `cargo bench -p bmm-generator`.
//!
//! - `generator/check`: parse and validate the spec.
//! - `generator/render`: validate, emit every file and format it (one rustfmt process).
//! - `generator/generate_fresh`: what `bmm generate` does into an empty directory: render,
//!   then write the crate (500 user stubs included).
//! - `generator/regenerate`: the same into an up-to-date crate (nothing is written).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Duration;

use bmm_generator::RuntimeDependency;
use criterion::{Criterion, criterion_group, criterion_main};

/// 500 tools: HTTP GETs with a path and a query parameter, HTTP POSTs with a JSON body,
/// and Rust tools with an output schema, one third each.
pub fn spec_500() -> String {
    let mut spec = String::from(
        "spec_version: 1
server:
  name: bench-500
  version: 0.1.0
auth:
  scopes_supported: [items:read, items:write]
secrets:
  API_KEY: { description: Key of the upstream API }
upstreams:
  api:
    base_url: https://api.example.com
    auth: { type: bearer, secret: API_KEY }
tools:
",
    );
    for i in 0..500 {
        match i % 3 {
            0 => write!(
                spec,
                "  - name: get_item_{i}
    description: Reads one item of kind {i}, with an optional page size.
    scopes: [items:read]
    annotations: {{ read_only: true }}
    input:
      type: object
      properties:
        id: {{ type: string, description: The item id }}
        limit: {{ type: integer, minimum: 1, maximum: 100 }}
      required: [id]
    run:
      http:
        upstream: api
        method: GET
        path: /kind{i}/{{id}}
        query: {{ limit: \"{{limit}}\" }}
"
            ),
            1 => write!(
                spec,
                "  - name: create_item_{i}
    description: Creates an item of kind {i}.
    scopes: [items:write]
    input:
      type: object
      properties:
        title: {{ type: string, maxLength: 200 }}
        tags: {{ type: array, items: {{ type: string }} }}
        urgent: {{ type: boolean }}
      required: [title]
    run:
      http:
        upstream: api
        method: POST
        path: /kind{i}
        body: all
"
            ),
            _ => write!(
                spec,
                "  - name: compute_{i}
    description: Computes statistic {i} of a text.
    input:
      type: object
      properties:
        text: {{ type: string }}
        factor: {{ type: number }}
      required: [text]
    output:
      type: object
      properties:
        result: {{ type: string }}
        score: {{ type: number }}
      required: [result]
    run:
      rust: {{ fn: compute_{i} }}
"
            ),
        }
        .unwrap();
    }
    spec
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("bench_500.yaml");
    std::fs::write(&spec_path, spec_500()).unwrap();
    let runtime = RuntimeDependency::Version("0.1.0".to_owned());

    let (spec, findings) = bmm_generator::spec::check_file(&spec_path).unwrap();
    assert!(
        findings.iter().all(|d| !d.is_error()),
        "the bench spec must be valid: {findings:?}"
    );
    assert_eq!(spec.tools.len(), 500);
    let (files, _) = bmm_generator::generate::render(&spec_path, &runtime).unwrap();
    // Cargo.toml, README.md, main.rs, generated/mod.rs, the smoke test, state.rs,
    // tools/mod.rs and one stub per Rust tool.
    assert_eq!(files.len(), 7 + 500 / 3);

    let mut group = c.benchmark_group("generator");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("check", |b| {
        b.iter(|| bmm_generator::spec::check_file(&spec_path).unwrap());
    });
    group.bench_function("render", |b| {
        b.iter(|| bmm_generator::generate::render(&spec_path, &runtime).unwrap());
    });
    group.bench_function("generate_fresh", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |out| {
                let outcome =
                    bmm_generator::generate(&spec_path, out.path(), &runtime, false).unwrap();
                // The user's files: one stub per Rust tool, state.rs and tools/mod.rs.
                assert_eq!(outcome.created.len(), 500 / 3 + 2);
                out
            },
            criterion::BatchSize::PerIteration,
        );
    });
    let existing = tempfile::tempdir().unwrap();
    bmm_generator::generate(&spec_path, existing.path(), &runtime, false).unwrap();
    group.bench_function("regenerate", |b| {
        b.iter(|| {
            let outcome =
                bmm_generator::generate(&spec_path, existing.path(), &runtime, false).unwrap();
            assert!(outcome.changed.is_empty() && outcome.created.is_empty());
        });
    });
    group.finish();
}

criterion_group!(generator, benches);
criterion_main!(generator);
