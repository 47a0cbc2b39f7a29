//! The compiled route table: a segment trie, so a lookup walks the path's
//! segments once (plus bounded backtracking) whatever the number of routes.
//!
//! Precedence, most specific first:
//! 1. path: at each segment a literal beats `*`/`{name}`, which beats `**`;
//!    a deeper match beats a shallower `**`;
//! 2. among routes with the same path pattern: an exact host beats a
//!    wildcard host beats none; then routes with methods beat routes
//!    without; then more header conditions beat fewer;
//! 3. then the order in the files.
//!
//! If no candidate at a node accepts the request (method, host or headers
//! differ) the walk backtracks to the next less specific path.

use hashbrown::HashMap;

/// One segment of a compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    /// `*` or `{name}`: exactly one non-empty segment.
    Param(Option<Box<str>>),
    /// `**`: any suffix, including none. Last only.
    Rest,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    /// Routes ending here, best first.
    exact: Vec<u32>,
    /// Routes ending in `**` here, best first.
    rest: Vec<u32>,
}

/// The trie. Route ids index the policy's route list.
#[derive(Debug)]
pub struct Matcher {
    nodes: Vec<Node>,
    case_insensitive: bool,
}

/// Longest segment lowercased on the stack; longer ones are looked up in a
/// heap copy.
const STACK_SEGMENT: usize = 128;

impl Matcher {
    pub fn new(case_insensitive: bool) -> Matcher {
        Matcher {
            nodes: vec![Node::default()],
            case_insensitive,
        }
    }

    /// Add `route` under `pattern`. Candidates are ranked by [`Matcher::rank`]
    /// afterwards.
    pub fn insert(&mut self, pattern: &[Segment], route: u32) {
        let mut node = 0usize;
        for segment in pattern {
            node = match segment {
                Segment::Literal(text) => {
                    let key: Box<str> = if self.case_insensitive {
                        text.to_ascii_lowercase().into()
                    } else {
                        text.clone()
                    };
                    match self.nodes[node].literals.get(&key) {
                        Some(&child) => child as usize,
                        None => {
                            let child = self.push();
                            self.nodes[node].literals.insert(key, child as u32);
                            child
                        }
                    }
                }
                Segment::Param(_) => match self.nodes[node].param {
                    Some(child) => child as usize,
                    None => {
                        let child = self.push();
                        self.nodes[node].param = Some(child as u32);
                        child
                    }
                },
                Segment::Rest => {
                    self.nodes[node].rest.push(route);
                    return;
                }
            };
        }
        self.nodes[node].exact.push(route);
    }

    fn push(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Order every candidate list by `key` (smaller is better).
    pub fn rank<K: Ord>(&mut self, key: impl Fn(u32) -> K) {
        for node in &mut self.nodes {
            node.exact.sort_by_key(|&r| key(r));
            node.rest.sort_by_key(|&r| key(r));
        }
    }

    /// The best route for a normalised `path` that `accept` (methods, host,
    /// headers) takes.
    pub fn find(&self, path: &str, accept: impl Fn(u32) -> bool) -> Option<u32> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        self.walk(0, rest, &accept)
    }

    fn walk(&self, node: usize, rest: &str, accept: &impl Fn(u32) -> bool) -> Option<u32> {
        let here = &self.nodes[node];
        if rest.is_empty() {
            // A trailing slash does not change the route: `/a/` is `/a`.
            return first(&here.exact, accept).or_else(|| first(&here.rest, accept));
        }
        let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(child) = self.literal(here, segment) {
            if let Some(found) = self.walk(child as usize, tail, accept) {
                return Some(found);
            }
        }
        if let Some(child) = here.param {
            if let Some(found) = self.walk(child as usize, tail, accept) {
                return Some(found);
            }
        }
        first(&here.rest, accept)
    }

    fn literal(&self, node: &Node, segment: &str) -> Option<u32> {
        if !self.case_insensitive || !segment.bytes().any(|b| b.is_ascii_uppercase()) {
            return node.literals.get(segment).copied();
        }
        if segment.len() <= STACK_SEGMENT {
            let mut buffer = [0u8; STACK_SEGMENT];
            let lowered = &mut buffer[..segment.len()];
            lowered.copy_from_slice(segment.as_bytes());
            lowered.make_ascii_lowercase();
            // Lowercasing ASCII bytes keeps UTF-8 valid.
            let lowered = std::str::from_utf8(lowered).ok()?;
            node.literals.get(lowered).copied()
        } else {
            node.literals
                .get(segment.to_ascii_lowercase().as_str())
                .copied()
        }
    }

    /// Nodes in the trie (for sizing reports).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

fn first(candidates: &[u32], accept: &impl Fn(u32) -> bool) -> Option<u32> {
    candidates.iter().copied().find(|&r| accept(r))
}

/// Parse a path pattern: `/api/{tenant}/reports/**`.
pub fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("`{pattern}` must start with `/`"));
    };
    let mut segments = Vec::new();
    if rest.is_empty() {
        return Ok(segments);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let segment = match *part {
            "" if last => break, // `/api/` is `/api`
            "" => return Err(format!("`{pattern}` has an empty segment (`//`)")),
            "." | ".." => {
                return Err(format!(
                "`{pattern}` has a dot segment; requests are normalised, so it could never match"
            ))
            }
            "**" if last => Segment::Rest,
            "**" => return Err(format!("`**` must be the last segment of `{pattern}`")),
            "*" => Segment::Param(None),
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                let name = &p[1..p.len() - 1];
                if !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!(
                        "parameter `{p}` in `{pattern}`: names are letters, digits, `_` and `-`"
                    ));
                }
                Segment::Param(Some(name.into()))
            }
            p if p.contains('*') || p.contains('{') || p.contains('}') => {
                return Err(format!(
                "segment `{p}` of `{pattern}`: `*`, `**` and `{{name}}` stand for whole segments"
            ))
            }
            p => {
                // Only characters with one spelling after normalisation: a
                // literal `@` would miss a request for `%40` that the
                // upstream may read as the same path.
                if let Some(bad) = p.bytes().find(|&b| b.is_ascii() && !is_unreserved(b)) {
                    return Err(format!(
                        "segment `{p}` of `{pattern}` contains `{}`; literal segments may use letters, digits, `-`, `.`, `_`, `~` and non-ASCII text",
                        char::from(bad)
                    ));
                }
                Segment::Literal(encode_literal(p).into())
            }
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// Patterns are written decoded; requests are matched in their normalised
/// form, where only unreserved characters are decoded. Percent-encode the
/// rest (upper-case hex) so `/café` matches a request for `/caf%C3%A9`.
fn encode_literal(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The pattern with parameters unnamed, to compare patterns for shadowing.
pub fn pattern_key(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Param(_) => out.push('*'),
            Segment::Rest => out.push_str("**"),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The value of parameter `name` of `pattern` in a normalised `path` that
/// the pattern matched.
pub fn param_value<'a>(pattern: &[Segment], path: &'a str, name: &str) -> Option<&'a str> {
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    for segment in pattern {
        let part = parts.next()?;
        if let Segment::Param(Some(param)) = segment {
            if &**param == name {
                return Some(part);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str], insensitive: bool) -> Matcher {
        let mut m = Matcher::new(insensitive);
        for (i, p) in patterns.iter().enumerate() {
            m.insert(&parse_pattern(p).unwrap(), i as u32);
        }
        m
    }

    #[test]
    fn most_specific_path_wins_then_backtracks() {
        let m = table(
            &[
                "/api/**",
                "/api/reports/**",
                "/api/reports/{id}",
                "/api/reports/latest",
                "/**",
            ],
            false,
        );
        let any = |_| true;
        assert_eq!(m.find("/api/reports/latest", any), Some(3));
        assert_eq!(m.find("/api/reports/7", any), Some(2));
        assert_eq!(m.find("/api/reports/7/pdf", any), Some(1));
        assert_eq!(m.find("/api/reports", any), Some(1));
        assert_eq!(m.find("/api/reports/", any), Some(1));
        assert_eq!(m.find("/api", any), Some(0));
        assert_eq!(m.find("/other", any), Some(4));
        assert_eq!(m.find("/", any), Some(4));
        // The literal route refuses (say, wrong method): the parameter route serves.
        assert_eq!(m.find("/api/reports/latest", |r| r != 3), Some(2));
        assert_eq!(m.find("/api/reports/latest", |r| r != 3 && r != 2), Some(1));
    }

    #[test]
    fn no_catch_all_means_no_match() {
        let m = table(&["/a/b", "/a/*/c"], false);
        assert_eq!(m.find("/a/b", |_| true), Some(0));
        assert_eq!(m.find("/a/x/c", |_| true), Some(1));
        assert_eq!(m.find("/a/x", |_| true), None);
        assert_eq!(m.find("/a/b/c/d", |_| true), None);
        assert_eq!(m.find("/A/b", |_| true), None);
    }

    #[test]
    fn case_insensitive_tables_fold_ascii() {
        let m = table(&["/API/Export/**"], true);
        assert_eq!(m.find("/api/export/x", |_| true), Some(0));
        assert_eq!(m.find("/aPi/EXPORT", |_| true), Some(0));
        let long = format!("/api/export/{}", "X".repeat(300));
        assert_eq!(m.find(&long, |_| true), Some(0));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(parse_pattern("api").is_err());
        assert!(parse_pattern("/a/**/b").is_err());
        assert!(parse_pattern("/a/x*").is_err());
        assert!(parse_pattern("/a//b").is_err());
        assert!(parse_pattern("/a/../b").is_err());
        assert!(parse_pattern("/a/%2F").is_err());
        assert!(parse_pattern("/a/{bad name}").is_err());
        assert!(parse_pattern("/a/user@x").is_err());
        assert_eq!(parse_pattern("/").unwrap(), vec![]);
        assert_eq!(
            parse_pattern("/café").unwrap(),
            vec![Segment::Literal("caf%C3%A9".into())]
        );
        assert_eq!(
            pattern_key(&parse_pattern("/a/{id}/**").unwrap()),
            "/a/*/**"
        );
    }

    #[test]
    fn parameters_are_read_back() {
        let pattern = parse_pattern("/t/{tenant}/r/*").unwrap();
        assert_eq!(param_value(&pattern, "/t/acme/r/9", "tenant"), Some("acme"));
        assert_eq!(param_value(&pattern, "/t/acme/r/9", "nope"), None);
    }
}
