//! Docs that are tested (issue #18): every INI snippet in the README and `docs/` parses, none
//! carries an end-of-line comment (which configparser keeps in the value), and the sample
//! `docs/ddf.ini` lists every key with its default.

use std::path::{Path, PathBuf};

use ddf::{CacheConfig, Source};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```ini blocks of a Markdown file, with the line each starts on.
fn ini_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```ini") => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Values with an end-of-line comment: configparser keeps it in the value.
fn inline_comments(ini: &str) -> Vec<String> {
    ini.lines()
        .filter(|l| !l.trim_start().starts_with([';', '#', '[']))
        .filter_map(|l| l.split_once('='))
        .filter(|(_, v)| v.contains(" ;") || v.contains(" #") || v.contains("\t;"))
        .map(|(k, v)| format!("{}={v}", k.trim()))
        .collect()
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files
}

#[test]
fn every_ini_snippet_in_the_docs_parses_without_inline_comments() {
    let mut seen = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, ini) in ini_blocks(&text) {
            seen += 1;
            let at = format!("{}, block at line {line}", file.display());
            if let Err(e) = CacheConfig::from_ini_str(&ini) {
                panic!("{at}: {e}\n{ini}");
            }
            let bad = inline_comments(&ini);
            assert!(bad.is_empty(), "{at}: end-of-line comments: {bad:?}");
        }
    }
    assert!(
        seen >= 2,
        "the README and docs/memcached.md have INI snippets"
    );
}

#[test]
fn the_checker_catches_an_inline_comment() {
    let ini = "[cache]\nbackend = memcached ; or memcached_pickle\n; a comment line\n";
    assert_eq!(inline_comments(ini).len(), 1);
    assert!(CacheConfig::from_ini_str(ini).is_err());
}

#[test]
fn the_sample_ini_lists_every_key_with_its_default() {
    let path = root().join("docs/ddf.ini");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        inline_comments(&text).is_empty(),
        "{:?}",
        inline_comments(&text)
    );
    let sample = CacheConfig::from_ini_file(&path).unwrap();
    let defaults = CacheConfig::default().describe();
    let rows = sample.describe();
    assert_eq!(rows.len(), defaults.len());
    for (row, default) in rows.iter().zip(&defaults) {
        assert!(
            matches!(row.source, Source::Ini { .. }),
            "{} is missing from docs/ddf.ini",
            row.key
        );
        assert_eq!(row.value, default.value, "{}: not the default", row.key);
    }
}
