//! Dependencies point one way: the modules below name only the modules under them
//! (ARCHITECTURE.md, "Dependencies"). `scripts/module-graph.py` prints the whole graph and
//! its cycles; this test keeps the cycles broken so far from coming back.

use std::fs;
use std::path::{Path, PathBuf};

/// Each constrained module with every module of the crate it may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("types", &[]),
    ("crash", &[]),
    ("state", &[]),
    ("change", &["types"]),
    ("pg", &["types"]),
    ("settings", &["pg", "types"]),
    ("source", &["change", "pg", "types"]),
    ("sink", &["change", "crash", "pg", "types"]),
    (
        "bookkeeping",
        &["change", "pg", "settings", "state", "types"],
    ),
    // The declarations only: serving them and sampling slots is `monitor`'s, which reads
    // the bookkeeping and `control::health` (above the pipeline that records into these).
    ("metrics", &["source", "state", "types"]),
    (
        "pipeline",
        &[
            "bookkeeping",
            "change",
            "crash",
            "metrics",
            "pg",
            "settings",
            "sink",
            "source",
            "state",
            "types",
        ],
    ),
    (
        "control",
        &[
            "bookkeeping",
            "change",
            "crash",
            "pg",
            "pipeline",
            "settings",
            "sink",
            "source",
            "state",
            "types",
        ],
    ),
];

/// Files that must not name a sibling module: (file, path prefixes it must not contain).
const APART: &[(&str, &[&str])] = &[("sink/replica.rs", &["super::apply", "sink::apply"])];

/// What only `source/` may name: the wal2json decoder, the replication protocol's frames,
/// and reading wal2json's text (its commit times). Everything else gets `StreamEvent`s of
/// decoded messages with `Lsn` positions and typed commit times.
const SOURCE_ONLY: &[&str] = &[
    "wal2json::decode",
    "DecodeError",
    "XLogData",
    "CopyMessage",
    "parse_copy_data",
    "source::wire",
    "parse_from_str",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of top-level module `module`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    let mut files = Vec::new();
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.map(|entry| entry.expect("a readable src directory").path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The file's code without `//` comments and without its unit tests.
fn production_code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("a readable source file");
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(tests) => &text[..tests],
        None => &text[..],
    };
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names as `crate::x` or `crate::{x, y::z}`.
fn named_modules(code: &str) -> Vec<String> {
    let mut named = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += i32::from(c == '{') - i32::from(c == '}');
                    depth < 0
                })
                .map_or(group.len(), |(end, _)| end);
            let mut item_start = true;
            let mut depth = 0;
            for (i, c) in group[..end].char_indices() {
                depth += i32::from(c == '{') - i32::from(c == '}');
                if item_start && (c.is_alphabetic() || c == '_') {
                    named.push(ident(&group[i..]));
                    item_start = false;
                } else if c == ',' && depth == 0 {
                    item_start = true;
                }
            }
        } else {
            named.push(ident(rest));
        }
    }
    named
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn modules_name_only_the_modules_under_them() {
    let mut wrong = Vec::new();
    for (module, allowed) in ALLOWED {
        let files = files_of(module);
        assert!(!files.is_empty(), "no files for module {module}");
        for file in files {
            for named in named_modules(&production_code(&file)) {
                if named != *module && !allowed.contains(&named.as_str()) {
                    let file = file.strip_prefix(src()).unwrap_or(&file).display();
                    wrong.push(format!("{file} names crate::{named}"));
                }
            }
        }
    }
    for (file, paths) in APART {
        let code = production_code(&src().join(file));
        for path in *paths {
            if code.contains(path) {
                wrong.push(format!("{file} names {path}"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_wal2json_format_stops_at_source() {
    let mut wrong = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for path in fs::read_dir(&dir).expect("a readable src directory") {
            let path = path.expect("a readable src directory").path();
            if path.is_dir() {
                if path != src().join("source") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs")
                && path != src().join("layering.rs")
            {
                files.push(path);
            }
        }
    }
    assert!(files
        .iter()
        .any(|f| f.ends_with("pipeline/stream/reader.rs")));
    for file in files {
        let code = production_code(&file);
        for name in SOURCE_ONLY {
            if code.contains(name) {
                let file = file.strip_prefix(src()).unwrap_or(&file).display();
                wrong.push(format!("{file} names {name}"));
            }
        }
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn named_modules_reads_paths_and_groups() {
    let code = "use crate::types::Lsn;\nuse crate::{pg::{self, quote_ident}, change};\n\
                fn f(t: &crate::change::TableName) {}";
    assert_eq!(named_modules(code), ["types", "pg", "change", "change"]);
}
