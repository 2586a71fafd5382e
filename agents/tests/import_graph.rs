//! The import graph of the workspace's library crates has no circles: reading a folder
//! bottom-up (types and metrics first, the server on top) must work. The graph is built
//! from the `use` lines and the `crate::`/`super::` paths in the code, one node per module
//! file; a folder's re-exports (`pub use` in `mod.rs`/`lib.rs`) are its facade, followed to
//! the file that defines the item rather than counted as edges. Test modules are left out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// One module file and what it refers to.
struct ModFile {
    file: PathBuf,
    /// `pub use` targets by exported name, with their line (only in modules with
    /// children): the facade.
    reexports: BTreeMap<String, (ModPath, usize)>,
    /// `pub use a::*` targets of the facade.
    glob_reexports: Vec<ModPath>,
    /// Paths used by the code, with the line they are on.
    uses: Vec<(ModPath, usize)>,
}

/// Removes comments and the insides of string and char literals, keeping line breaks.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match b.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some('\n') => out.push('\n'),
                    _ => {}
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' && (b.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x', '\n', '\''), not a lifetime.
            let mut j = i + 1;
            if b.get(j) == Some(&'\\') {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Removes `#[cfg(test)] mod name { ... }` blocks (inline test modules).
fn without_inline_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let Some(open) = trimmed
            .strip_prefix("mod ")
            .and_then(|m| m.find(['{', ';']).map(|p| (m, p)))
        else {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        };
        let (m, p) = open;
        if m.as_bytes()[p] == b';' {
            rest = &m[p + 1..];
            continue;
        }
        let mut depth = 0;
        let mut end = m.len();
        for (k, ch) in m[p..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = p + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        // Keep the line count.
        out.extend(m[..end].chars().filter(|&ch| ch == '\n'));
        rest = &m[end..];
    }
    out.push_str(rest);
    out
}

/// Expands a use tree (`super::{a, b::{c, d}}`) into its paths (a glob ends with `*`).
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn go(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            for part in split_top(inner) {
                go(prefix, part, out);
            }
            return;
        }
        match tree.find("::") {
            Some(p) if !tree[..p].contains('{') => {
                let mut next = prefix.to_vec();
                next.push(tree[..p].trim().to_string());
                go(&next, &tree[p + 2..], out);
            }
            _ => {
                let name = tree.split(" as ").next().unwrap_or(tree).trim();
                let mut path = prefix.to_vec();
                if name != "self" {
                    path.push(name.to_string());
                }
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if p.is_dir() {
            // Binaries are leaves of their own crate target, not modules of the library.
            if name != "bin" {
                collect(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
            out.push(p);
        }
    }
}

fn parse(src: &Path, file: &Path) -> (ModPath, ModFile) {
    let me = module_of(src, file);
    // A module with children (`mod.rs`, `lib.rs`, or `x.rs` beside a folder `x/`) may
    // re-export them: its facade.
    let facade = matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("mod.rs" | "lib.rs")
    ) || file.with_extension("").is_dir();
    let code = without_inline_tests(&strip(&fs::read_to_string(file).expect("read")));
    let mut m = ModFile {
        file: file.to_path_buf(),
        reexports: BTreeMap::new(),
        glob_reexports: Vec::new(),
        uses: Vec::new(),
    };
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    // `use` statements.
    let mut in_use = vec![false; code.len()];
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(p) = code[at..].find("use ") {
        let start = at + p;
        at = start + 4;
        let before = code[..start].trim_end();
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !boundary {
            continue;
        }
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let statement_start = before.is_empty() || before.ends_with([';', '{', '}', ']']) || public;
        if !statement_start {
            continue;
        }
        let Some(end) = code[start..].find(';') else {
            break;
        };
        let tree = &code[start + 4..start + end];
        for slot in &mut in_use[start..start + end] {
            *slot = true;
        }
        let line = line_of(start);
        for path in expand(tree) {
            if !matches!(
                path.first().map(String::as_str),
                Some("crate" | "super" | "self")
            ) {
                // A path through a module in scope (`use submodule::X`) is relative to `me`.
                let Some(first) = path.first() else { continue };
                if first.chars().next().is_some_and(char::is_uppercase) {
                    continue;
                }
                let mut rel = vec!["self".to_string()];
                rel.extend(path.iter().cloned());
                push_use(&mut m, facade && public, rel, line);
                continue;
            }
            push_use(&mut m, facade && public, path, line);
        }
    }
    // A re-exported name the module's own code also uses is a real edge (`mod x;` lines
    // declare, they do not use).
    let mut words: BTreeSet<&str> = BTreeSet::new();
    let mut prev = "";
    let mut word_start = None;
    for (i, c) in code.char_indices().chain([(code.len(), ' ')]) {
        let word = c.is_alphanumeric() || c == '_';
        match (word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(s)) => {
                let w = &code[s..i];
                if !in_use[s] && prev != "mod" {
                    words.insert(w);
                }
                prev = w;
                word_start = None;
            }
            _ => {}
        }
    }
    let used_reexports: Vec<(ModPath, usize)> = m
        .reexports
        .iter()
        .filter(|(name, _)| words.contains(name.as_str()))
        .map(|(_, (path, line))| (path.clone(), *line))
        .collect();
    m.uses.extend(used_reexports);
    // Paths written inline in the code: crate::a::b, super::a, self::a.
    for anchor in ["crate::", "super::", "self::"] {
        let mut at = 0;
        while let Some(p) = code[at..].find(anchor) {
            let start = at + p;
            at = start + anchor.len();
            if in_use[start]
                || (start > 0
                    && (bytes[start - 1].is_ascii_alphanumeric()
                        || bytes[start - 1] == b'_'
                        || bytes[start - 1] == b':'))
            {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| start + e);
            let path: Vec<String> = code[start..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            m.uses.push((path, line_of(start)));
        }
    }
    (me, m)
}

fn push_use(m: &mut ModFile, reexport: bool, path: Vec<String>, line: usize) {
    if !reexport {
        m.uses.push((path, line));
        return;
    }
    match path.last().map(String::as_str) {
        Some("*") => m.glob_reexports.push(path[..path.len() - 1].to_vec()),
        Some(name) => {
            m.reexports.insert(name.to_string(), (path, line));
        }
        None => {}
    }
}

struct Graph {
    mods: BTreeMap<ModPath, ModFile>,
}

impl Graph {
    /// The absolute module path a relative path starts from.
    fn anchor(&self, me: &ModPath, path: &[String]) -> (ModPath, usize) {
        let mut base = me.clone();
        let mut i = 0;
        while let Some(seg) = path.get(i) {
            match seg.as_str() {
                "crate" => base.clear(),
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            i += 1;
        }
        (base, i)
    }

    /// The module file that defines what `path` (used in `me`) names.
    fn resolve(&self, me: &ModPath, path: &[String], depth: usize) -> Option<ModPath> {
        let (mut at, i) = self.anchor(me, path);
        for (k, seg) in path[i..].iter().enumerate() {
            let mut child = at.clone();
            child.push(seg.clone());
            if self.mods.contains_key(&child) {
                at = child;
                continue;
            }
            // An item of `at`: follow the facade to the file that defines it.
            let here = self.mods.get(&at)?;
            if depth < 8 {
                if let Some((target, _)) = here.reexports.get(seg) {
                    let mut rest = target.clone();
                    rest.extend(path[i + k + 1..].iter().cloned());
                    return self.resolve(&at, &rest, depth + 1).or(Some(at));
                }
                for glob in &here.glob_reexports {
                    let mut rest = glob.clone();
                    rest.push(seg.clone());
                    if let Some(t) = self.resolve(&at, &rest, depth + 1)
                        && t != at
                    {
                        return Some(t);
                    }
                }
            }
            return Some(at);
        }
        Some(at)
    }

    /// Edges: module -> the modules its code uses, with the line of the first use.
    fn edges(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, usize>> {
        let mut out: BTreeMap<ModPath, BTreeMap<ModPath, usize>> = BTreeMap::new();
        for (me, m) in &self.mods {
            let entry = out.entry(me.clone()).or_default();
            for (path, line) in &m.uses {
                if let Some(to) = self.resolve(me, path, 0)
                    && &to != me
                    && self.mods.contains_key(&to)
                {
                    entry.entry(to).or_insert(*line);
                }
            }
        }
        out
    }
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<ModPath, BTreeMap<ModPath, usize>>) -> Vec<Vec<ModPath>> {
    struct T<'a> {
        edges: &'a BTreeMap<ModPath, BTreeMap<ModPath, usize>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a ModPath) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flat_map(|e| e.keys()) {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mods = files.iter().map(|f| parse(src, f)).collect();
    Graph { mods }
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// A readable report of every circle: its modules and the use lines that close it.
fn report(src: &Path) -> Vec<String> {
    let g = graph_of(src);
    let edges = g.edges();
    circles(&edges)
        .into_iter()
        .map(|comp| {
            let set: BTreeSet<&ModPath> = comp.iter().collect();
            let mut lines = vec![format!(
                "circle: {}",
                comp.iter().map(name).collect::<Vec<_>>().join(", ")
            )];
            for from in &comp {
                for (to, line) in &edges[from] {
                    if set.contains(to) {
                        let file = g.mods[from]
                            .file
                            .strip_prefix(src)
                            .unwrap_or(&g.mods[from].file);
                        lines.push(format!(
                            "  {} -> {} ({}:{line})",
                            name(from),
                            name(to),
                            file.display()
                        ));
                    }
                }
            }
            lines.join("\n")
        })
        .collect()
}

fn crate_src(name: &str) -> PathBuf {
    let here = PathBuf::from(option_env!("CARGO_MANIFEST_DIR").unwrap_or("agents"));
    here.join("..").join(name).join("src")
}

#[test]
fn agents_have_no_import_circles() {
    let found = report(&crate_src("agents"));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_other_crates_have_no_import_circles() {
    for krate in ["operator", "crds", "crds/runtime", "e2e", "agents/bench"] {
        let found = report(&crate_src(krate));
        assert!(found.is_empty(), "{krate}:\n{}", found.join("\n"));
    }
}

/// The workspace packages a package depends on (any section: normal, dev, build), by
/// package name, with the folder of each: `name = { path = .. }` or `name.workspace = true`
/// resolved through the root manifest's `[workspace.dependencies]`.
fn ironpool_deps(dir: &Path, workspace: &BTreeMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("read Cargo.toml");
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let name = key.trim().trim_end_matches(".workspace").to_string();
        if !in_deps || !name.starts_with("ironpool-") {
            continue;
        }
        let path = value
            .split_once("path = \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(p, _)| dir.join(p));
        let path = path.or_else(|| workspace.get(&name).cloned());
        out.push((name, path.expect("a workspace dependency has a path")));
    }
    out
}

/// The agents (and their benchmark package) never depend on the operator crate, directly or
/// through another workspace package: what they share with it lives in `ironpool-runtime`.
/// (`cargo tree -p ironpool-agents | grep ironpool-operator` prints nothing.)
#[test]
fn agents_do_not_depend_on_the_operator() {
    let root = crate_src("agents").join("../..");
    let mut workspace = BTreeMap::new();
    let mut in_deps = false;
    for line in fs::read_to_string(root.join("Cargo.toml"))
        .expect("root")
        .lines()
    {
        if line.starts_with('[') {
            in_deps = line.trim() == "[workspace.dependencies]";
        } else if in_deps && line.starts_with("ironpool-") {
            for (name, path) in ironpool_deps_line(line, &root) {
                workspace.insert(name, path);
            }
        }
    }
    assert!(workspace.contains_key("ironpool-runtime"), "{workspace:?}");
    for start in ["agents", "agents/bench"] {
        let mut seen = BTreeSet::new();
        let mut todo = vec![(format!("{start} package"), root.join(start))];
        while let Some((name, dir)) = todo.pop() {
            let dir = dir.canonicalize().expect("package folder");
            if !seen.insert(dir.clone()) {
                continue;
            }
            for (dep, path) in ironpool_deps(&dir, &workspace) {
                assert_ne!(dep, "ironpool-operator", "{name} depends on the operator");
                todo.push((dep, path));
            }
        }
        assert!(seen.len() > 2, "{start}: only {seen:?}");
    }
}

fn ironpool_deps_line(line: &str, root: &Path) -> Vec<(String, PathBuf)> {
    let Some((key, value)) = line.split_once('=') else {
        return Vec::new();
    };
    value
        .split_once("path = \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(p, _)| vec![(key.trim().to_string(), root.join(p))])
        .unwrap_or_default()
}

/// The checker itself finds a circle, resolves through a facade, and ignores comments,
/// strings and test modules.
#[test]
fn the_checker_finds_circles_and_only_circles() {
    let dir = std::env::temp_dir().join(format!("import-graph-{}", std::process::id()));
    let src = dir.join("src");
    let write = |p: &str, s: &str| {
        let path = src.join(p);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, s).expect("write");
    };
    write("lib.rs", "pub mod a;\n");
    write(
        "a/mod.rs",
        "pub mod top; pub mod base; pub mod mid;\npub use top::Top;\npub use base::Base;\npub struct Err;\n",
    );
    write(
        "a/base.rs",
        "use super::Err;\n// use super::top::Top;\nconst S: &str = \"super::top\";\npub struct Base;\n#[cfg(test)]\nmod tests { use super::super::top::Top; }\n",
    );
    write("a/mid.rs", "use super::{Base, Err};\npub struct Mid;\n");
    write(
        "a/top.rs",
        "use super::{mid::Mid, Base};\npub struct Top;\n",
    );
    assert!(report(&src).is_empty(), "{:?}", report(&src));
    // mid now reaches top through the facade: top -> mid -> top.
    write(
        "a/mid.rs",
        "use super::{Base, Err, Top};\npub struct Mid;\n",
    );
    let found = report(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("a::mid -> a::top (a/mid.rs:1)"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("a::top -> a::mid (a/top.rs:1)"),
        "{}",
        found[0]
    );
    // An inline path counts too.
    write(
        "a/mid.rs",
        "pub struct Mid;\nfn f() { let _ = crate::a::top::Top; }\n",
    );
    let found = report(&src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("a::mid -> a::top (a/mid.rs:2)"),
        "{}",
        found[0]
    );
    let _ = fs::remove_dir_all(&dir);
}
