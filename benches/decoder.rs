//! Throughput of the wal2json decoder on one core, in bytes of wal2json output per second.
//!
//! The corpora are generated here in the exact shape PostgreSQL 15 + wal2json 2.5 emit with
//! tributary's options (captured from a real server running pgbench):
//!
//! - `pgbench_tpcb`: TPC-B transactions: B, UPDATE pgbench_accounts (with its char(84)
//!   filler), UPDATE pgbench_tellers, UPDATE pgbench_branches, INSERT pgbench_history, C.
//! - `wide_insert`: inserts of a 16-column row with long text (with some escapes), exact
//!   numerics, timestamps, jsonb and NULLs.
//!
//! The decode limit of the peer in DESIGN.md (`pg_recvlogical` + wal2json, 400 k row
//! changes in ~2.2 s) is roughly 55 MB/s of this output; the decoder must be well above.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary::source::wal2json::decode;

/// A deterministic xorshift generator, so every run decodes the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn lsn(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF)
}

fn timestamp(rng: &mut Rng) -> String {
    format!(
        "2024-11-21 20:{:02}:{:02}.{:06}+00",
        rng.below(60),
        rng.below(60),
        rng.below(1_000_000)
    )
}

fn pgbench_corpus(transactions: u64) -> Vec<String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut records = Vec::new();
    let mut position = 0x21C_AC38_u64;
    for xid in 769..769 + transactions {
        let time = timestamp(&mut rng);
        let head = |position: u64| {
            format!(
                r#""xid":{xid},"timestamp":"{time}","lsn":"{}""#,
                lsn(position)
            )
        };
        let aid = rng.below(100_000) + 1;
        let tid = rng.below(10) + 1;
        let bid = 1;
        let delta = rng.below(10_000) as i64 - 5_000;
        let commit = position + 0x1E0;
        let end = commit + 0x30;
        let tx_lsns = format!(r#""lsn":"{}","nextlsn":"{}""#, lsn(commit), lsn(end));
        records.push(format!(
            r#"{{"action":"B","xid":{xid},"timestamp":"{time}",{tx_lsns}}}"#
        ));
        records.push(format!(
            r#"{{"action":"U",{},"schema":"public","table":"pgbench_accounts","columns":[{{"name":"aid","value":{aid}}},{{"name":"bid","value":{bid}}},{{"name":"abalance","value":{delta}}},{{"name":"filler","value":"{}"}}],"identity":[{{"name":"aid","value":{aid}}}]}}"#,
            head(position),
            " ".repeat(84)
        ));
        records.push(format!(
            r#"{{"action":"U",{},"schema":"public","table":"pgbench_tellers","columns":[{{"name":"tid","value":{tid}}},{{"name":"bid","value":{bid}}},{{"name":"tbalance","value":{delta}}},{{"name":"filler","value":null}}],"identity":[{{"name":"tid","value":{tid}}}]}}"#,
            head(position + 0xF0)
        ));
        records.push(format!(
            r#"{{"action":"U",{},"schema":"public","table":"pgbench_branches","columns":[{{"name":"bid","value":{bid}}},{{"name":"bbalance","value":{delta}}},{{"name":"filler","value":null}}],"identity":[{{"name":"bid","value":{bid}}}]}}"#,
            head(position + 0x140)
        ));
        records.push(format!(
            r#"{{"action":"I",{},"schema":"public","table":"pgbench_history","columns":[{{"name":"tid","value":{tid}}},{{"name":"bid","value":{bid}}},{{"name":"aid","value":{aid}}},{{"name":"delta","value":{delta}}},{{"name":"mtime","value":"{}"}},{{"name":"filler","value":null}}]}}"#,
            head(position + 0x190),
            &time[..time.len() - 3]
        ));
        records.push(format!(
            r#"{{"action":"C","xid":{xid},"timestamp":"{time}",{tx_lsns}}}"#
        ));
        position = end + 0x10;
    }
    records
}

fn wide_corpus(rows: u64) -> Vec<String> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "élit",
    ];
    let mut records = Vec::new();
    let mut position = 0x3000_0000_u64;
    for id in 1..=rows {
        let mut body = String::new();
        for i in 0..(150 + rng.below(150)) {
            body.push_str(words[rng.below(words.len() as u64) as usize]);
            // Some escapes, as real text has: quotes, newlines, backslashes.
            body.push_str(match i % 40 {
                13 => "\\n",
                27 => " \\\"quoted\\\" ",
                39 => "\\\\",
                _ => " ",
            });
        }
        let mut columns = String::new();
        let mut column = |name: &str, value: String| {
            if !columns.is_empty() {
                columns.push(',');
            }
            write!(columns, r#"{{"name":"{name}","value":{value}}}"#).unwrap();
        };
        column("id", id.to_string());
        column(
            "account",
            format!(
                "\"{:016x}-0000-4000-8000-{:012x}\"",
                rng.next(),
                rng.below(1 << 48)
            ),
        );
        column(
            "amount",
            format!("{}.{:06}", rng.below(1_000_000_000), rng.below(1_000_000)),
        );
        column("balance", "12345678901234567890.123456789".to_owned());
        column("rate", format!("0.{}", rng.below(1 << 40)));
        column("quantity", (rng.below(1000) as i64 - 500).to_string());
        column("active", (rng.below(2) == 0).to_string());
        column(
            "title",
            format!("\"{} {}\"", words[rng.below(8) as usize], id),
        );
        column("body", format!("\"{body}\""));
        column("tags", "\"{red,green,\\\"blue sky\\\"}\"".to_owned());
        column(
            "attrs",
            "\"{\\\"k\\\": 1, \\\"nested\\\": {\\\"a\\\": [1, 2, 3]}}\"".to_owned(),
        );
        column("created_at", format!("\"{}\"", timestamp(&mut rng)));
        column("updated_at", "null".to_owned());
        column("deleted_at", "null".to_owned());
        column(
            "payload",
            format!("\"{:032x}{:032x}\"", rng.next(), rng.next()),
        );
        column("version", rng.below(100).to_string());
        records.push(format!(
            r#"{{"action":"I","xid":{},"timestamp":"{}","lsn":"{}","schema":"public","table":"documents","columns":[{columns}]}}"#,
            1000 + id / 50,
            timestamp(&mut rng),
            lsn(position)
        ));
        position += 0x800;
    }
    records
}

fn bench_corpus(c: &mut Criterion, name: &str, records: &[String]) {
    // Every record must decode: a benchmark of error paths would be meaningless.
    for record in records {
        decode(record.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    }
    let bytes: usize = records.iter().map(String::len).sum();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            for record in records {
                black_box(decode(black_box(record.as_bytes())).unwrap());
            }
        })
    });
    group.finish();
}

fn decoder(c: &mut Criterion) {
    bench_corpus(c, "pgbench_tpcb", &pgbench_corpus(2_000));
    bench_corpus(c, "wide_insert", &wide_corpus(1_000));
}

criterion_group!(benches, decoder);
criterion_main!(benches);
