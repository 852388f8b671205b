//! No module import cycles in any crate of the workspace (ARCHITECTURE.md, "Module layers").
//!
//! The check reads every `.rs` file under each crate's `src/`, maps it to its module path
//! (`src/lib.rs`/`main.rs` → the crate root, `src/a.rs` and `src/a/mod.rs` → `a`, `src/a/b.rs` →
//! `a::b`), and collects the modules it names: `crate::…` paths (in `use` trees, braces included,
//! and inline paths) and `super::…` paths, resolved to the longest known module prefix. Comments,
//! string and char literals are skipped. Items under `#[cfg(test)]` (the `mod tests` blocks) are
//! excluded on purpose: a unit test may use another module as its oracle (ops' tests check kernels
//! against `reference`) without making production code depend on it.
//!
//! Each reference from module `a::x::…` to `a::y::…` is an edge between the siblings `a::x` and
//! `a::y` under their deepest common ancestor (a reference into one's own ancestor or descendant
//! is not an edge). So the graph covers the top-level modules of each crate (`ops`, `reference`,
//! `format`, `model`, …) and the siblings inside every module (`web/src`'s files, `format/*`).
//! Any cycle in it fails the test, naming the modules and one `file:line` per edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates checked, relative to the workspace root.
const CRATES: &[&str] = &[
    "engine/src",
    "engine/capi/src",
    "native-demo/src",
    "web/src",
    "tests/src",
    "xtask/src",
];

type ModPath = Vec<String>;

/// Where an edge was seen: file and line.
#[derive(Clone, Debug)]
struct Site {
    file: String,
    line: usize,
}

/// Removes comments and the contents of string and char literals (newlines kept, so line numbers
/// stay right).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if c[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Blanks every item that follows `#[cfg(test)]` (up to its matching `}` or its `;`), newlines kept.
fn drop_test_items(src: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0i32;
        let mut end = item.len();
        let mut past_attr = ATTR.len();
        // Skip further attributes (`#[allow(…)]`) before the item.
        loop {
            let t = item[past_attr..].trim_start();
            if t.starts_with("#[") {
                let start = item.len() - t.len();
                let close = t.find(']').map_or(item.len(), |e| start + e + 1);
                past_attr = close;
            } else {
                break;
            }
        }
        for (k, ch) in item.char_indices().skip_while(|&(k, _)| k < past_attr) {
            match ch {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 && ch == '}' {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(item[..end].chars().filter(|&ch| ch == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Every path that starts with `crate::` or `super::` in `code`, expanded through `use` braces:
/// (segments, line). `super` segments are kept for the caller to resolve.
fn paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let c: Vec<char> = code.chars().collect();
    let line_of = |pos: usize| 1 + c[..pos].iter().filter(|&&ch| ch == '\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let starts = |word: &str| {
            let w: Vec<char> = word.chars().collect();
            c[i..].starts_with(&w)
                && (i == 0 || !(is_ident(c[i - 1]) || c[i - 1] == ':'))
                && c.get(i + w.len()..i + w.len() + 2) == Some(&[':', ':'])
        };
        if starts("crate") || starts("super") {
            let line = line_of(i);
            let mut prefixes = Vec::new();
            parse_tree(&c, &mut i, Vec::new(), &mut prefixes);
            found.extend(prefixes.into_iter().map(|p| (p, line)));
        } else {
            i += 1;
        }
    }
    found
}

/// Parses a path or use tree at `c[*i..]` (`a::b::{c, d::e}`), pushing each full path.
fn parse_tree(c: &[char], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        while *i < c.len() && c[*i].is_whitespace() {
            *i += 1;
        }
        if c.get(*i) == Some(&'{') {
            *i += 1;
            loop {
                parse_tree(c, i, prefix.clone(), out);
                while *i < c.len() && c[*i].is_whitespace() {
                    *i += 1;
                }
                match c.get(*i) {
                    Some(',') => *i += 1,
                    Some('}') => {
                        *i += 1;
                        return;
                    }
                    _ => return,
                }
                while *i < c.len() && c[*i].is_whitespace() {
                    *i += 1;
                }
                if c.get(*i) == Some(&'}') {
                    *i += 1;
                    return;
                }
            }
        }
        let start = *i;
        while *i < c.len() && is_ident(c[*i]) {
            *i += 1;
        }
        if *i == start {
            out.push(prefix);
            return;
        }
        prefix.push(c[start..*i].iter().collect());
        let mut j = *i;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        if c.get(j..j + 2) == Some(&[':', ':']) {
            *i = j + 2;
        } else {
            out.push(prefix);
            return;
        }
    }
}

/// The module path of a source file relative to its crate's `src/`.
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// Resolves a `crate::`/`super::` path from `from` (a file module) to the deepest known module.
fn resolve(from: &ModPath, segs: &[String], known: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut base: ModPath;
    let mut rest = segs;
    if rest.first().map(String::as_str) == Some("crate") {
        base = Vec::new();
        rest = &rest[1..];
    } else {
        base = from.clone();
        while rest.first().map(String::as_str) == Some("super") {
            base.pop()?;
            rest = &rest[1..];
        }
    }
    let mut best = base.clone();
    for seg in rest {
        base.push(seg.clone());
        if known.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// A cycle in the sibling graph of one crate, as a list of modules and the site of each edge.
#[derive(Debug)]
struct Cycle {
    modules: Vec<ModPath>,
    sites: Vec<Site>,
}

/// Sibling edges (`a::x` → `a::y`) of one crate from (module, source) pairs.
fn edges(files: &[(ModPath, String, String)]) -> BTreeMap<(ModPath, ModPath), Site> {
    let known: BTreeSet<ModPath> = files.iter().map(|(m, _, _)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (from, name, src) in files {
        let code = drop_test_items(&strip(src));
        for (segs, line) in paths(&code) {
            let Some(to) = resolve(from, &segs, &known) else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // Own module, an ancestor, or a descendant.
            }
            let key = (from[..=common].to_vec(), to[..=common].to_vec());
            graph.entry(key).or_insert(Site {
                file: name.clone(),
                line,
            });
        }
    }
    graph
}

/// Every elementary cycle found by a depth-first search (one per back edge).
fn cycles(graph: &BTreeMap<(ModPath, ModPath), Site>) -> Vec<Cycle> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in graph.keys() {
        next.entry(a).or_default().push(b);
    }
    let mut found = Vec::new();
    let mut done: BTreeSet<&ModPath> = BTreeSet::new();
    fn visit<'a>(
        node: &'a ModPath,
        next: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        stack: &mut Vec<&'a ModPath>,
        done: &mut BTreeSet<&'a ModPath>,
        graph: &BTreeMap<(ModPath, ModPath), Site>,
        found: &mut Vec<Cycle>,
    ) {
        if let Some(at) = stack.iter().position(|&m| m == node) {
            let mut modules: Vec<ModPath> = stack[at..].iter().map(|&m| m.clone()).collect();
            modules.push(node.clone());
            let sites = modules
                .windows(2)
                .map(|w| graph[&(w[0].clone(), w[1].clone())].clone())
                .collect();
            found.push(Cycle { modules, sites });
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node);
        for &n in next.get(node).into_iter().flatten() {
            visit(n, next, stack, done, graph, found);
        }
        stack.pop();
        done.insert(node);
    }
    for &start in next.keys() {
        visit(start, &next, &mut Vec::new(), &mut done, graph, &mut found);
    }
    found
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn describe(krate: &str, cycle: &Cycle) -> String {
    let names: Vec<String> = cycle.modules.iter().map(|m| m.join("::")).collect();
    let sites: Vec<String> = cycle
        .sites
        .iter()
        .zip(cycle.modules.windows(2))
        .map(|(s, w)| {
            format!(
                "  {} → {} at {}:{}",
                w[0].join("::"),
                w[1].join("::"),
                s.file,
                s.line
            )
        })
        .collect();
    format!("{krate}: cycle {}\n{}", names.join(" → "), sites.join("\n"))
}

fn check_crate(root: &Path, krate: &str) -> Vec<String> {
    let src = root.join(krate);
    let mut paths = Vec::new();
    rs_files(&src, &mut paths);
    paths.sort();
    let files: Vec<(ModPath, String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap();
            let text = std::fs::read_to_string(p).unwrap();
            (
                module_of(rel),
                p.strip_prefix(root).unwrap().display().to_string(),
                text,
            )
        })
        .collect();
    cycles(&edges(&files))
        .iter()
        .map(|c| describe(krate, c))
        .collect()
}

#[test]
fn no_module_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut failures = Vec::new();
    for krate in CRATES {
        failures.extend(check_crate(root, krate));
    }
    assert!(
        failures.is_empty(),
        "module import cycles (ARCHITECTURE.md, \"Module layers\"):\n{}",
        failures.join("\n")
    );
}

fn synthetic(files: &[(&str, &str)]) -> Vec<Cycle> {
    let files: Vec<(ModPath, String, String)> = files
        .iter()
        .map(|(p, s)| (module_of(Path::new(p)), p.to_string(), s.to_string()))
        .collect();
    cycles(&edges(&files))
}

#[test]
fn a_synthetic_cycle_is_found_and_named() {
    let found = synthetic(&[
        ("lib.rs", "pub mod ops;\npub mod reference;\n"),
        ("ops/mod.rs", "pub mod matvec;\n"),
        (
            "ops/matvec.rs",
            "use crate::{reference::ternary::words_per_row, Error};\n",
        ),
        ("reference/mod.rs", "pub mod ternary;\n"),
        (
            "reference/ternary.rs",
            "\n\nuse crate::ops::matvec::Epilogue;\n",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    let text = describe("engine/src", &found[0]);
    assert!(
        text.contains("ops → reference → ops") || text.contains("reference → ops → reference"),
        "{text}"
    );
    assert!(text.contains("reference/ternary.rs:3"), "{text}");
    assert!(text.contains("ops/matvec.rs:1"), "{text}");
}

#[test]
fn sibling_files_through_super_and_inline_paths() {
    let found = synthetic(&[
        ("main.rs", "mod bench;\nmod compare;\n"),
        ("bench.rs", "fn f() { super::compare::run(); }\n"),
        ("compare.rs", "fn g() -> crate::bench::Shape { todo!() }\n"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn test_items_comments_and_strings_are_not_edges() {
    let found = synthetic(&[
        ("lib.rs", "pub mod ops;\npub mod reference;\n"),
        (
            "ops.rs",
            "//! CPU twin: [`crate::reference::f`].\nconst S: &str = \"crate::reference\";\n\
             #[cfg(test)]\nmod tests {\n    use crate::reference::f;\n    fn t() { let c = '{'; }\n}\n\
             fn after() {}\n",
        ),
        ("reference.rs", "use crate::ops::after;\n"),
    ]);
    assert!(found.is_empty(), "{found:?}");
    // The same reference outside the test module is an edge, and makes the cycle.
    let found = synthetic(&[
        ("lib.rs", "pub mod ops;\npub mod reference;\n"),
        (
            "ops.rs",
            "#[cfg(test)]\nmod tests {}\nuse crate::reference::f;\n",
        ),
        ("reference.rs", "use crate::ops::after;\n"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn layers_without_a_cycle_pass() {
    let found = synthetic(&[
        (
            "lib.rs",
            "pub mod layout;\npub mod ops;\npub mod reference;\n",
        ),
        ("layout.rs", "pub fn words_per_row() {}\n"),
        ("ops.rs", "use crate::layout::words_per_row;\n"),
        (
            "reference.rs",
            "use crate::{layout::words_per_row, ops::Epilogue};\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}
