//! The pickle codec beside serde_json on the seed's record
//! `{'name': 'web', 'ports': ['8080:80'], 'volumes': ['/data:/app/data']}`:
//! `cargo bench -p ddf --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ddf::testing::internals::pickle;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    ports: Vec<String>,
    volumes: Vec<String>,
}

/// `pickle.dumps(record, protocol=5)` from CPython 3.11: what the Python DDF writes.
const PYTHON_P5: &[u8] = b"\x80\x05\x95F\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04name\x94\x8c\x03web\x94\x8c\x05ports\x94]\x94\x8c\x078080:80\x94a\x8c\x07volumes\x94]\x94\x8c\x0f/data:/app/data\x94au.";

fn codec(c: &mut Criterion) {
    let record = Record {
        name: "web".into(),
        ports: vec!["8080:80".into()],
        volumes: vec!["/data:/app/data".into()],
    };
    let pkl = pickle::to_vec(&record).expect("pickle");
    let json = serde_json::to_vec(&record).expect("json");
    assert_eq!(
        pickle::from_slice::<Record>(PYTHON_P5).expect("python pickle"),
        record
    );

    let mut g = c.benchmark_group("codec");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("encode/pickle", |b| {
        b.iter(|| pickle::to_vec(black_box(&record)).expect("pickle"))
    });
    g.bench_function("encode/json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&record)).expect("json"))
    });
    g.bench_function("decode/pickle", |b| {
        b.iter(|| pickle::from_slice::<Record>(black_box(&pkl)).expect("pickle"))
    });
    g.bench_function("decode/pickle_from_python_p5", |b| {
        b.iter(|| pickle::from_slice::<Record>(black_box(PYTHON_P5)).expect("pickle"))
    });
    g.bench_function("decode/json", |b| {
        b.iter(|| serde_json::from_slice::<Record>(black_box(&json)).expect("json"))
    });
    g.bench_function("decode_dynamic/pickle_value", |b| {
        b.iter(|| pickle::from_slice_value(black_box(&pkl)).expect("pickle"))
    });
    g.bench_function("decode_dynamic/json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&json)).expect("json"))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
