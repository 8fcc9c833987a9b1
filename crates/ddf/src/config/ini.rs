//! A small INI reader that follows Python's `configparser.ConfigParser` (3.11) rules.
//!
//! Written by hand because no maintained crate matches Python's semantics: the
//! `configparser` crate strips inline comments, lowercases section names and accepts duplicate
//! keys silently; `rust-ini` interprets backslashes (`C:\temp` becomes a tab) and reports errors at
//! the end of the file. The Python DDF and ddf read the same `ddf.ini`, so they must agree on
//! every value. The rules kept here, as in CPython's `RawConfigParser._read`:
//!
//! - a line whose stripped text starts with `#` or `;` is a comment; inline `;`/`#` text is part of
//!   the value;
//! - `[name]` starts a section; section names keep their case; `[DEFAULT]` values are inherited by
//!   every section;
//! - `key = value` or `key: value` (the first `=` or `:` splits); keys are lowercased; surrounding
//!   white space is stripped;
//! - a line indented deeper than its key's line continues the value (joined with `\n`); empty
//!   lines inside a value are kept, trailing ones dropped;
//! - a key before the first section, a line with no delimiter, an empty key, a duplicate section or
//!   a duplicate key in one section is an error with its line number;
//! - values are interpolated as by `BasicInterpolation`: `%%` is a literal `%`, `%(name)s` is the
//!   value of `name` in the same section (or `[DEFAULT]`), any other `%` is an error.

use std::collections::HashMap;

/// One `key = value` of a section, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The lowercased key.
    pub key: String,
    /// The raw value (continuation lines joined, not yet interpolated).
    pub raw: String,
    /// The 1-based line of the key.
    pub line: usize,
}

/// A parsed INI document.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ini {
    /// `[DEFAULT]` entries.
    defaults: Vec<Entry>,
    /// Sections in file order, each with its entries in file order.
    sections: Vec<(String, Vec<Entry>)>,
    /// The line of each section's header, in the order of `sections`.
    header_lines: Vec<usize>,
}

/// An INI syntax error: the line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

const DEFAULT_SECTION: &str = "DEFAULT";

impl Ini {
    /// Parses INI text.
    pub(crate) fn parse(text: &str) -> Result<Ini, IniError> {
        let mut ini = Ini::default();
        // Where entries go: None before the first section, Some(None) for DEFAULT,
        // Some(Some(i)) for sections[i].
        let mut cursect: Option<Option<usize>> = None;
        let mut in_value = false; // the last key line can take continuation lines
        let mut indent_level = usize::MAX;
        let mut seen_sections: Vec<String> = Vec::new();

        // configparser reads lines with their terminators and strips them; `str::lines` splits on
        // \n and \r\n, which is what Python's universal newlines give for files.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (idx, line) in text.lines().enumerate() {
            let lineno = idx + 1;
            let stripped = line.trim();
            let is_comment = stripped.starts_with('#') || stripped.starts_with(';');
            if stripped.is_empty() || is_comment {
                if !is_comment
                    && in_value
                    && let Some(e) = current_entry(&mut ini, cursect)
                {
                    e.raw.push('\n');
                }
                continue;
            }
            let cur_indent = line.len() - line.trim_start().len();
            if cursect.is_some() && in_value && cur_indent > indent_level {
                if let Some(e) = current_entry(&mut ini, cursect) {
                    e.raw.push('\n');
                    e.raw.push_str(stripped);
                }
                continue;
            }
            indent_level = cur_indent;
            if let Some(name) = section_header(stripped) {
                in_value = false;
                if name == DEFAULT_SECTION {
                    cursect = Some(None);
                    continue;
                }
                if seen_sections.iter().any(|s| s == name) {
                    return Err(IniError {
                        line: lineno,
                        message: format!("section [{name}] appears twice"),
                    });
                }
                seen_sections.push(name.to_owned());
                ini.sections.push((name.to_owned(), Vec::new()));
                ini.header_lines.push(lineno);
                cursect = Some(Some(ini.sections.len() - 1));
                continue;
            }
            let Some(sect) = cursect else {
                return Err(IniError {
                    line: lineno,
                    // Never echo the line: it may hold a password.
                    message: match stripped.find(['=', ':']) {
                        Some(pos) => format!(
                            "key {:?} stands before the first section header (e.g. [cache])",
                            stripped[..pos].trim_end().to_lowercase()
                        ),
                        None => {
                            "text stands before the first section header (e.g. [cache])".to_owned()
                        }
                    },
                });
            };
            let Some(pos) = stripped.find(['=', ':']) else {
                return Err(IniError {
                    line: lineno,
                    message: "this line is not `key = value`, a [section], a comment or an \
                              indented continuation"
                        .to_owned(),
                });
            };
            let key = stripped[..pos].trim_end().to_lowercase();
            if key.is_empty() {
                return Err(IniError {
                    line: lineno,
                    message: format!("no key before the `{}`", &stripped[pos..=pos]),
                });
            }
            let value = stripped[pos + 1..].trim().to_owned();
            let (name, entries) = match sect {
                None => (DEFAULT_SECTION, &mut ini.defaults),
                Some(i) => {
                    let (n, v) = &mut ini.sections[i];
                    (n.as_str(), v)
                }
            };
            if let Some(prev) = entries.iter().find(|e| e.key == key) {
                return Err(IniError {
                    line: lineno,
                    message: format!(
                        "key {key:?} appears twice in [{name}] (first on line {})",
                        prev.line
                    ),
                });
            }
            entries.push(Entry {
                key,
                raw: value,
                line: lineno,
            });
            in_value = true;
        }
        // configparser strips trailing white space (the empty lines) of joined values.
        for e in ini
            .defaults
            .iter_mut()
            .chain(ini.sections.iter_mut().flat_map(|(_, v)| v.iter_mut()))
        {
            let t = e.raw.trim_end().len();
            e.raw.truncate(t);
        }
        Ok(ini)
    }

    /// Every section's name (`[DEFAULT]` aside) and the line of its header, in file order.
    pub(crate) fn section_headers(&self) -> impl Iterator<Item = (&str, usize)> {
        self.sections
            .iter()
            .map(|(n, _)| n.as_str())
            .zip(self.header_lines.iter().copied())
    }

    /// Whether the document has a section of this exact name.
    #[cfg(test)]
    pub(crate) fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|(n, _)| n == name)
    }

    /// The entries of a section (its own, then the `[DEFAULT]` ones it does not override), with
    /// values interpolated.
    pub(crate) fn section(&self, name: &str) -> Result<Vec<Entry>, IniError> {
        let own: &[Entry] = self
            .sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        let mut all: Vec<&Entry> = own.iter().collect();
        for d in &self.defaults {
            if !own.iter().any(|e| e.key == d.key) {
                all.push(d);
            }
        }
        let lookup: HashMap<&str, &Entry> = all.iter().map(|e| (e.key.as_str(), *e)).collect();
        all.iter()
            .map(|e| {
                Ok(Entry {
                    key: e.key.clone(),
                    raw: interpolate(
                        &e.raw,
                        &e.key,
                        e.line,
                        &lookup,
                        1,
                        &mut MAX_REFERENCES.clone(),
                    )?,
                    line: e.line,
                })
            })
            .collect()
    }
}

fn current_entry(ini: &mut Ini, cursect: Option<Option<usize>>) -> Option<&mut Entry> {
    match cursect? {
        None => ini.defaults.last_mut(),
        Some(i) => ini.sections[i].1.last_mut(),
    }
}

/// `\[(?P<header>.+)\]` matched at the start of the stripped line (not anchored at the end):
/// the header runs to the last `]`.
fn section_header(stripped: &str) -> Option<&str> {
    let rest = stripped.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    (end > 0).then(|| &rest[..end])
}

const MAX_INTERPOLATION_DEPTH: usize = 10;
/// The longest value interpolation may produce. References can multiply (ten `%(a)s` in a value
/// whose `a` holds ten `%(b)s`...), so a small file could otherwise expand exponentially; no
/// setting of ddf's is anywhere near this long.
const MAX_INTERPOLATED_LEN: usize = 64 * 1024;
/// The most `%(name)s` references one value may resolve, nested ones included: references to
/// empty values expand to nothing but still cost a lookup each.
const MAX_REFERENCES: usize = 10_000;

/// Error messages name the key, never the value: it may be a password.
fn interpolate(
    raw: &str,
    key: &str,
    line: usize,
    lookup: &HashMap<&str, &Entry>,
    depth: usize,
    budget: &mut usize,
) -> Result<String, IniError> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(IniError {
            line,
            message: format!(
                "value references nest deeper than {MAX_INTERPOLATION_DEPTH} levels (a loop of %(name)s?)"
            ),
        });
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(r) = rest.strip_prefix("%%") {
            out.push('%');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("%(") {
            let Some(close) = r.find(")s") else {
                return Err(IniError {
                    line,
                    message: format!(
                        "bad interpolation syntax in the value of {key:?}: `%(` needs `name)s`"
                    ),
                });
            };
            if *budget == 0 {
                return Err(IniError {
                    line,
                    message: format!(
                        "the value of {key:?} resolves more than {MAX_REFERENCES} %(name)s \
                         references (nested ones included); allowed: at most {MAX_REFERENCES}"
                    ),
                });
            }
            *budget -= 1;
            let name = r[..close].to_lowercase();
            let Some(target) = lookup.get(name.as_str()) else {
                return Err(IniError {
                    line,
                    message: format!(
                        "the value of {key:?} refers with %(...)s to a key that is not set in this section or [DEFAULT]"
                    ),
                });
            };
            out.push_str(&interpolate(
                &target.raw,
                &target.key,
                line,
                lookup,
                depth + 1,
                budget,
            )?);
            if out.len() > MAX_INTERPOLATED_LEN {
                return Err(IniError {
                    line,
                    message: format!(
                        "the value of {key:?} expands to more than {MAX_INTERPOLATED_LEN} bytes \
                         through %(name)s references; allowed: at most {MAX_INTERPOLATED_LEN}"
                    ),
                });
            }
            rest = &r[close + 2..];
        } else {
            return Err(IniError {
                line,
                message: format!(
                    "in the value of {key:?}, '%' must be followed by '%' or '(' (write %% for a literal %, as Python's configparser requires)"
                ),
            });
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_cannot_expand_exponentially() {
        // Six levels of ten references: 10^6 copies of "x" at the top if unbounded.
        let mut text = String::from(
            "[cache]\nv0 = xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
        );
        for i in 1..=6 {
            text.push_str(&format!(
                "v{i} = {}\n",
                format!("%(v{})s", i - 1).repeat(10)
            ));
        }
        let msg = Ini::parse(&text)
            .unwrap()
            .section("cache")
            .unwrap_err()
            .message;
        assert!(msg.contains("expands to more than"), "{msg}");
        // Empty values expand to nothing: the number of references is bounded instead.
        let mut text = String::from("[cache]\nv0 =\n");
        for i in 1..=9 {
            text.push_str(&format!(
                "v{i} = {}\n",
                format!("%(v{})s", i - 1).repeat(100)
            ));
        }
        let msg = Ini::parse(&text)
            .unwrap()
            .section("cache")
            .unwrap_err()
            .message;
        assert!(msg.contains("references"), "{msg}");
    }

    fn cache(text: &str) -> Vec<(String, String)> {
        Ini::parse(text)
            .unwrap()
            .section("cache")
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.raw))
            .collect()
    }

    fn err(text: &str) -> IniError {
        match Ini::parse(text) {
            Err(e) => e,
            Ok(ini) => ini.section("cache").unwrap_err(),
        }
    }

    #[test]
    fn inline_comment_characters_are_part_of_the_value() {
        assert_eq!(
            cache("[cache]\nredis_password = se;cr#et ; not a comment\n"),
            vec![("redis_password".into(), "se;cr#et ; not a comment".into())]
        );
    }

    #[test]
    fn keys_are_lowercased_sections_are_not() {
        let ini = Ini::parse("[Cache]\nBackend = redis\n").unwrap();
        assert!(ini.has_section("Cache"));
        assert!(!ini.has_section("cache"));
        assert_eq!(ini.section("Cache").unwrap()[0].key, "backend");
    }

    #[test]
    fn colon_and_equals_both_delimit_and_the_first_wins() {
        assert_eq!(
            cache("[cache]\nredis_url: redis://h:1/0\nx = a:b\n"),
            vec![
                ("redis_url".into(), "redis://h:1/0".into()),
                ("x".into(), "a:b".into())
            ]
        );
    }

    #[test]
    fn backslashes_are_kept() {
        assert_eq!(
            cache("[cache]\npickle_dir = C:\\temp\\new\n")[0].1,
            "C:\\temp\\new"
        );
    }

    #[test]
    fn continuation_lines_join_with_newlines() {
        assert_eq!(
            cache("[cache]\nmemcached_servers = a:1,\n    b:2\n\n  c:3\n\nttl = 5\n"),
            vec![
                ("memcached_servers".into(), "a:1,\nb:2\n\nc:3".into()),
                ("ttl".into(), "5".into())
            ]
        );
    }

    #[test]
    fn comment_lines_inside_values_are_skipped() {
        assert_eq!(
            cache("[cache]\nx = a\n  # note\n  b\n")[0].1,
            "a\nb".to_string()
        );
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e = err("ttl = 5\n[cache]\n");
        assert_eq!(e.line, 1);
        assert!(
            e.message.contains("before the first section"),
            "{}",
            e.message
        );

        let e = err("[cache]\nttl = 5\n\nTTL = 6\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("first on line 2"), "{}", e.message);

        let e = err("[cache]\n[other]\n[cache]\n");
        assert_eq!(e.line, 3);

        let e = err("[cache]\njust words\n");
        assert_eq!(e.line, 2);

        let e = err("[cache]\n = 5\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn defaults_are_inherited_and_overridable() {
        assert_eq!(
            cache("[DEFAULT]\nttl = 5\nenabled = yes\n[cache]\nttl = 7\n"),
            vec![("ttl".into(), "7".into()), ("enabled".into(), "yes".into())]
        );
    }

    #[test]
    fn basic_interpolation() {
        assert_eq!(
            cache("[cache]\nbase = /srv\npickle_dir = %(base)s/cache\np = 100%%\n"),
            vec![
                ("base".into(), "/srv".into()),
                ("pickle_dir".into(), "/srv/cache".into()),
                ("p".into(), "100%".into())
            ]
        );
        let e = err("[cache]\np = 100%\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("%%"), "{}", e.message);
        let e = err("[cache]\na = %(b)s\nb = %(a)s\n");
        assert!(e.message.contains("deeper"), "{}", e.message);
        let e = err("[cache]\na = %(nope)s\n");
        assert!(e.message.contains("not set"), "{}", e.message);
    }

    #[test]
    fn errors_never_echo_values_or_lines() {
        for text in [
            "redis_password = hunter2\n[cache]\n",
            "[cache]\nhunter2\n",
            "[cache]\nredis_password = hun%ter2\n",
            "[cache]\nredis_url = redis://:p%40hunter2@h:1/0\n",
            "[cache]\nredis_password = %(hunter2)s\n",
            "[cache]\nredis_password = %(hunter2\n",
        ] {
            let e = err(text);
            assert!(!e.message.contains("hunter2"), "{text:?}: {}", e.message);
        }
        assert!(
            err("redis_password = x\n")
                .message
                .contains("redis_password")
        );
    }

    #[test]
    fn section_header_runs_to_the_last_bracket() {
        assert_eq!(section_header("[a]b]"), Some("a]b"));
        assert_eq!(section_header("[cache] trailing"), Some("cache"));
        assert_eq!(section_header("[]"), None);
    }

    #[test]
    fn crlf_and_bom_are_accepted() {
        assert_eq!(
            cache("\u{feff}[cache]\r\nttl = 5\r\n"),
            vec![("ttl".into(), "5".into())]
        );
    }

    /// Property tests: [`Ini::parse`] never panics on any text, and what it accepts survives a
    /// write and a second read unchanged.
    mod props {
        use proptest::prelude::*;

        use super::super::*;

        /// Writes a document back as INI text: `[DEFAULT]` first, then the sections in order;
        /// a value's later lines as indented continuation lines (empty ones as empty lines).
        fn render(ini: &Ini) -> String {
            fn entries(out: &mut String, entries: &[Entry]) {
                for e in entries {
                    let mut lines = e.raw.split('\n');
                    out.push_str(&format!("{} = {}\n", e.key, lines.next().unwrap_or("")));
                    for l in lines {
                        if !l.is_empty() {
                            out.push_str("  ");
                            out.push_str(l);
                        }
                        out.push('\n');
                    }
                }
            }
            let mut out = String::new();
            if !ini.defaults.is_empty() {
                out.push_str("[DEFAULT]\n");
                entries(&mut out, &ini.defaults);
            }
            for (name, es) in &ini.sections {
                out.push_str(&format!("[{name}]\n"));
                entries(&mut out, es);
            }
            out
        }

        /// Keys and values without their line numbers (which a rewrite changes).
        fn shape(ini: &Ini) -> Vec<(String, Vec<(String, String)>)> {
            let kv = |es: &[Entry]| {
                es.iter()
                    .map(|e| (e.key.clone(), e.raw.clone()))
                    .collect::<Vec<_>>()
            };
            std::iter::once((DEFAULT_SECTION.to_owned(), kv(&ini.defaults)))
                .chain(ini.sections.iter().map(|(n, es)| (n.clone(), kv(es))))
                .collect()
        }

        /// One line of INI-like text: headers, `key = value` (indented or not), comments,
        /// blank lines, interpolation syntax, and now and then anything at all.
        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => "(cache|DEFAULT|[a-zA-Z \\]\\[]{1,5})".prop_map(|n| format!("[{n}]")),
                6 => (
                    "( |\t){0,3}",
                    "[a-zA-Z_ %\\[]{0,5}",
                    "[=:]",
                    "([ -~]|%\\((a|b|K)\\)s|%%|é){0,6}",
                )
                    .prop_map(|(i, k, d, v)| format!("{i}{k}{d}{v}")),
                1 => "[#;][ -~]{0,8}",
                2 => "( |\t){0,4}",
                1 => ".{0,12}",
            ]
        }

        fn document() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(line(), 0..24),
                prop_oneof![Just("\n"), Just("\r\n")],
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(lines, eol, bom, header)| {
                    // Half the documents start with a section, so that more are accepted.
                    let bom = if bom { "\u{feff}" } else { "" };
                    let header = if header { "[cache]" } else { "" };
                    format!("{bom}{header}{eol}{}", lines.join(eol))
                })
        }

        /// Every section (and a missing one) of a parsed document, interpolated: an error or
        /// entries, never a panic.
        fn read_all(ini: &Ini) {
            for (name, _) in &ini.sections {
                let _ = ini.section(name);
            }
            let _ = ini.section("cache");
            let _ = ini.section("no such section");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_text_never_panics(text in ".*") {
                if let Ok(ini) = Ini::parse(&text) {
                    read_all(&ini);
                }
            }

            #[test]
            fn accepted_documents_round_trip(text in document()) {
                let Ok(ini) = Ini::parse(&text) else {
                    return Ok(());
                };
                read_all(&ini);
                let written = render(&ini);
                let again = Ini::parse(&written).map_err(|e| {
                    TestCaseError::fail(format!("{e:?} on the rewrite:\n{written}"))
                })?;
                prop_assert_eq!(shape(&again), shape(&ini), "rewrite:\n{}", written);
                // Interpolation sees the same values too.
                for (name, _) in &ini.sections {
                    let strip = |r: Result<Vec<Entry>, IniError>| {
                        r.map(|es| es.into_iter().map(|e| (e.key, e.raw)).collect::<Vec<_>>())
                            .map_err(|e| e.message)
                    };
                    prop_assert_eq!(strip(again.section(name)), strip(ini.section(name)));
                }
            }
        }
    }
}
