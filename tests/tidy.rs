//! The invariants of ARCHITECTURE.md that a machine can check, checked on the source
//! (as rust-analyzer's `tidy` tests do): where SQL may be written, which layers may
//! import which, that every module says what it is, that files stay small enough to
//! hold in one's head, and that README's list of grants is the code's.
//!
//! Each rule reports every offence with its path and line, so a failure says what to
//! move where.

use std::fs;
use std::path::{Path, PathBuf};

/// Files longer than this say why in their `//!` header ("Longer than ... because").
const MAX_LINES: usize = 400;

/// The layers, as folders (or files) of `src/`, and the crate modules each may not
/// import. Dependencies point one way (ARCHITECTURE.md, Layers): the model, the error
/// and the leaves (`base`) know no subsystem; SQL no actor; the actors (writer,
/// reader, router, metrics) neither each other nor the engine; the engine no service;
/// the services (decide, subscribe) neither each other nor the public handle.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "src/model",
        &[
            "base",
            "config",
            "sql",
            "writer",
            "reader",
            "router",
            "metrics",
            "indexing",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/error.rs",
        &[
            "base",
            "config",
            "model",
            "sql",
            "writer",
            "reader",
            "router",
            "metrics",
            "indexing",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/base",
        &[
            "model",
            "sql",
            "writer",
            "reader",
            "router",
            "metrics",
            "indexing",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/sql",
        &[
            "writer",
            "reader",
            "router",
            "metrics",
            "indexing",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/metrics",
        &[
            "sql",
            "writer",
            "reader",
            "router",
            "indexing",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/indexing.rs",
        &[
            "writer",
            "reader",
            "router",
            "metrics",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/writer",
        &[
            "reader",
            "router",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/reader",
        &[
            "writer",
            "router",
            "engine",
            "subscribe",
            "decide",
            "store",
            "api",
        ],
    ),
    (
        "src/router",
        &["writer", "engine", "subscribe", "decide", "store", "api"],
    ),
    ("src/engine", &["subscribe", "decide", "store", "api"]),
    ("src/decide", &["subscribe", "store", "api"]),
    ("src/subscribe", &["decide", "store", "api"]),
];

/// Crates that do I/O (or run actors), which the model may not use.
const IO_CRATES: &[&str] = &[
    "tokio",
    "actix",
    "tokio_postgres",
    "postgres_types",
    "bb8",
    "bb8_postgres",
    "std::net",
    "std::fs",
    "rustls",
];

/// Words that start a statement; a string literal starting with one is SQL.
const SQL_STARTS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "LISTEN",
    "NOTIFY", "SET", "SHOW", "CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "LOCK", "TRUNCATE",
    "PREPARE", "EXECUTE", "DO",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the crate's root, sorted.
fn rust_files(dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).expect("read a source file");
                files.push((relative(&path), text));
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("under the crate")
        .to_string_lossy()
        .replace('\\', "/")
}

/// The code of a line: without a `//` comment (a crude cut that is enough for this
/// source, which puts no `//` inside string literals on code lines that matter here).
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    line
}

/// String literals that start with an SQL keyword: `"SELECT ...`, `"\n  INSERT ...`
/// (also when the literal's text begins on the next line).
fn sql_literals(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let code_only: String = lines.iter().map(|l| format!("{}\n", code(l))).collect();
    let mut found: Vec<(usize, String)> = Vec::new();
    for (i, _) in code_only.match_indices('"') {
        let after = code_only[i + 1..].trim_start();
        let word: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        let next = after[word.len()..].chars().next();
        let ends_word = next.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
        if SQL_STARTS.contains(&word.as_str()) && ends_word {
            let line = code_only[..i].matches('\n').count() + 1;
            if found.last().is_none_or(|(l, _)| *l != line) {
                found.push((line, lines[line - 1].trim().to_owned()));
            }
        }
    }
    found
}

#[test]
fn sql_text_lives_only_in_the_sql_layer() {
    let mut offences = Vec::new();
    for (path, text) in rust_files("src") {
        if path.starts_with("src/sql/") {
            continue;
        }
        for (line, literal) in sql_literals(&text) {
            offences.push(format!("{path}:{line}: {literal}"));
        }
    }
    assert!(
        offences.is_empty(),
        "SQL text outside src/sql (move it into the statement family it belongs to):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_sql_rule_finds_sql() {
    let found = sql_literals("let a = \"SELECT 1\";\nlet b = \"cannot LISTEN\";\n// \"SELECT\"\nlet c = \"\n  INSERT INTO x\";\nlet d = \"Selected\";");
    assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 4]);
}

/// `crate::<module>` paths a file mentions in code, with their lines.
fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = code(line);
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            // `dcb_store::` or `super::` are not this; a `$crate::` macro path neither.
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, module));
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = line.trim_start().strip_prefix("use crate::{") {
            for module in group.split(',') {
                let module: String = module
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push((n + 1, module));
            }
        }
    }
    found
}

#[test]
fn layers_import_only_downward() {
    let mut offences = Vec::new();
    for (layer, forbidden) in LAYERS {
        let files = if layer.ends_with(".rs") {
            let text = fs::read_to_string(root().join(layer)).expect("read a layer file");
            vec![(layer.to_string(), text)]
        } else {
            rust_files(layer)
        };
        for (path, text) in files {
            for (line, module) in crate_imports(&text) {
                if forbidden.contains(&module.as_str()) {
                    offences.push(format!("{path}:{line}: imports crate::{module}"));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "imports against the layering (ARCHITECTURE.md, Layers):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_model_does_no_io() {
    let mut offences = Vec::new();
    for (path, text) in rust_files("src/model") {
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            for krate in IO_CRATES {
                let used = line.contains(&format!("use {krate}"))
                    || line.contains(&format!("{krate}::"))
                        && !line.contains(&format!("_{krate}::"));
                if used {
                    offences.push(format!("{path}:{}: uses {krate}", n + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the model must stay free of I/O:\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_module_says_what_it_is_and_long_files_say_why() {
    let mut offences = Vec::new();
    let sources = [
        "src",
        "cli/src",
        "examples/courses/src",
        "testkit/src",
        "tests",
        "benches",
    ];
    for dir in sources {
        for (path, text) in rust_files(dir) {
            let header: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.starts_with("#!"))
                .collect();
            if !header.iter().any(|l| l.starts_with("//!")) {
                offences.push(format!("{path}: no `//!` header saying what the module is"));
            }
            let lines = text.lines().count();
            let says_why = header.join(" ").contains("Longer than");
            if dir == "src" && lines > MAX_LINES && !says_why {
                offences.push(format!(
                    "{path}: {lines} lines (more than {MAX_LINES}) and its header does not say why (\"Longer than ... because ...\")"
                ));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}

#[test]
fn readme_lists_the_grants_the_code_makes() {
    let readme = fs::read_to_string(root().join("README.md")).expect("read README.md");
    let rows: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "| table | privileges |")
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let expected: Vec<String> = dcb_store::APPLICATION_GRANTS
        .iter()
        .map(|(table, privileges)| format!("| `{table}` | {privileges} |"))
        .collect();
    assert_eq!(
        rows, expected,
        "README's grants table must be APPLICATION_GRANTS"
    );
}

#[test]
fn readme_embedding_snippet_is_the_compiled_and_tested_one() {
    let readme = fs::read_to_string(root().join("README.md")).expect("read README.md");
    let snippet: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "## Embedding it")
        .skip_while(|l| *l != "```rust")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let minimal = fs::read_to_string(root().join("examples/courses/src/bin/minimal.rs"))
        .expect("read the minimal example");
    let code: Vec<&str> = minimal
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .collect();
    assert_eq!(
        snippet, code,
        "README's embedding snippet must be examples/courses/src/bin/minimal.rs"
    );
}

#[test]
fn every_configuration_key_has_a_setter_named_like_it() {
    let config = fs::read_to_string(root().join("src/config/mod.rs")).expect("read config");
    let setters = fs::read_to_string(root().join("src/config/setters.rs")).expect("read setters");
    let fields: Vec<&str> = config
        .lines()
        .skip_while(|l| *l != "pub struct Config {")
        .skip(1)
        .take_while(|l| *l != "}")
        .filter(|l| {
            l.starts_with("    ")
                && !l.trim_start().starts_with("//")
                && !l.trim_start().starts_with('#')
        })
        .filter_map(|l| l.trim().split(':').next())
        .collect();
    assert!(fields.len() > 30, "found the keys: {fields:?}");
    let missing: Vec<String> = fields
        .iter()
        .map(|key| format!("pub fn with_{}", key.trim_end_matches("_ms")))
        .filter(|setter| {
            !setters.contains(&format!("{setter}(")) && !setters.contains(&format!("{setter}<"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys without a setter of their name: {missing:?}"
    );
}

#[test]
fn setters_store_what_they_are_given_and_validate_names_the_key() {
    use std::time::Duration;
    let zero = dcb_store::Config::default()
        .with_database_url("postgres://x@127.0.0.1/x")
        .with_operation_timeout(Duration::ZERO);
    match zero.validate() {
        Err(dcb_store::Error::Config(message)) => {
            assert!(message.contains("operation_timeout_ms"), "{message}")
        }
        other => panic!("a zero operation timeout must be refused: {other:?}"),
    }
    let ok = dcb_store::Config::default().with_operation_timeout(Duration::from_millis(1));
    assert!(ok.validate().is_ok());
}

#[test]
fn rows_are_decoded_next_to_their_statements() {
    let mut offences = Vec::new();
    for (path, text) in rust_files("src") {
        if path.starts_with("src/sql/") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            if line.contains(".try_get(") || line.contains(".get::<_") || line.contains("row.get(")
            {
                offences.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "rows decoded outside src/sql (decode them beside the statement that defines them):\n{}",
        offences.join("\n")
    );
}
