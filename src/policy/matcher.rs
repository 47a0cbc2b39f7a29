//! The compiled route table: routes grouped by host, one segment trie per
//! group, so a lookup walks the path's segments once (plus bounded
//! backtracking) whatever the number of routes.
//!
//! Precedence, as nginx `server` blocks and Envoy virtual hosts decide:
//! 1. host group: routes whose exact host is the request's, then routes
//!    whose wildcard host matches it (a longer suffix before a shorter one),
//!    then routes without a host. A group is left for the next only when
//!    none of its routes takes the request, so a host-scoped `/**` covers
//!    the whole host;
//! 2. within a group, path: at each segment a literal beats `*`/`{name}`,
//!    which beats `**`; a deeper match beats a shallower `**`;
//! 3. among routes with the same path pattern: routes with methods beat
//!    routes without; then more header conditions beat fewer;
//! 4. then the order in the files.
//!
//! If no candidate at a node accepts the request (method or headers differ)
//! the walk backtracks to the next less specific path. A policy without host
//! routes has only the host-less group: the lookup costs what it did before
//! groups existed.

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

/// A route's host condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower case.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`, lower case.
    Suffix(String),
}

impl HostMatch {
    /// Whether every host `other` matches, `self` matches too.
    pub fn contains(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
            (HostMatch::Suffix(suffix), HostMatch::Exact(host)) => {
                ends_with_ignore_case(host, suffix)
            }
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// `host` is a subdomain of `suffix` (`.example.com`).
fn ends_with_ignore_case(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Every route, in host groups: see the module comment for the order.
#[derive(Debug)]
pub struct RouteTable {
    /// By host name (lower case), sorted, for a binary search that neither
    /// hashes nor allocates.
    exact: Vec<(Box<str>, Matcher)>,
    /// By suffix (`.example.com`), longest first.
    wildcard: Vec<(Box<str>, Matcher)>,
    any: Matcher,
    case_insensitive: bool,
}

impl RouteTable {
    pub fn new(case_insensitive: bool) -> RouteTable {
        RouteTable {
            exact: Vec::new(),
            wildcard: Vec::new(),
            any: Matcher::new(case_insensitive),
            case_insensitive,
        }
    }

    /// Add `route` to the group of `host` under `pattern`.
    pub fn insert(&mut self, host: Option<&HostMatch>, pattern: &[Segment], route: u32) {
        let case_insensitive = self.case_insensitive;
        let matcher = match host {
            None => &mut self.any,
            Some(HostMatch::Exact(name)) => {
                let at = match self
                    .exact
                    .binary_search_by(|(h, _)| (**h).cmp(name.as_str()))
                {
                    Ok(at) => at,
                    Err(at) => {
                        let group = (name.as_str().into(), Matcher::new(case_insensitive));
                        self.exact.insert(at, group);
                        at
                    }
                };
                &mut self.exact[at].1
            }
            Some(HostMatch::Suffix(suffix)) => {
                let at = match self.wildcard.iter().position(|(s, _)| **s == **suffix) {
                    Some(at) => at,
                    None => {
                        // Longest first; equal lengths never both match one host.
                        let at = self
                            .wildcard
                            .iter()
                            .position(|(s, _)| s.len() < suffix.len())
                            .unwrap_or(self.wildcard.len());
                        let group = (suffix.as_str().into(), Matcher::new(case_insensitive));
                        self.wildcard.insert(at, group);
                        at
                    }
                };
                &mut self.wildcard[at].1
            }
        };
        matcher.insert(pattern, route);
    }

    /// Order the candidates of every group by `key` (smaller is better).
    pub fn rank<K: Ord>(&mut self, key: impl Fn(u32) -> K) {
        for matcher in self.groups_mut() {
            matcher.rank(&key);
        }
    }

    fn groups_mut(&mut self) -> impl Iterator<Item = &mut Matcher> {
        self.exact
            .iter_mut()
            .chain(self.wildcard.iter_mut())
            .map(|(_, m)| m)
            .chain(std::iter::once(&mut self.any))
    }

    /// The best route for a request to `host` (lower or mixed case, no
    /// port) and normalised `path` that `accept` (methods, headers) takes.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        accept: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        if let Some(host) = host {
            if !self.exact.is_empty() {
                let group = self.exact.binary_search_by(|(name, _)| {
                    name.bytes()
                        .cmp(host.bytes().map(|b| b.to_ascii_lowercase()))
                });
                if let Ok(at) = group {
                    if let Some(found) = self.exact[at].1.find(path, &accept) {
                        return Some(found);
                    }
                }
            }
            for (suffix, matcher) in &self.wildcard {
                if ends_with_ignore_case(host, suffix) {
                    if let Some(found) = matcher.find(path, &accept) {
                        return Some(found);
                    }
                }
            }
        }
        self.any.find(path, accept)
    }

    /// Nodes in every trie (for sizing reports).
    pub fn node_count(&self) -> usize {
        self.exact
            .iter()
            .chain(&self.wildcard)
            .map(|(_, m)| m.node_count())
            .sum::<usize>()
            + self.any.node_count()
    }
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
        // A byte search: `split_once('/')`'s char searcher cost ~5 % of a
        // whole decision (callgrind); `/` is ASCII, so its index is a char
        // boundary.
        let (segment, tail) = match rest.bytes().position(|b| b == b'/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
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
                // literal `+` would miss a request for `%2B` that the
                // upstream may read as the same path. `:` and `@` qualify:
                // the normaliser decodes `%3A` and `%40`.
                if let Some(bad) = p.bytes().find(|&b| b.is_ascii() && !is_literal(b)) {
                    return Err(format!(
                        "segment `{p}` of `{pattern}` contains `{}`; literal segments may use letters, digits, `-`, `.`, `_`, `~`, `:`, `@` and non-ASCII text",
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
/// form, where only unreserved characters, `:` and `@` are decoded.
/// Percent-encode the rest (upper-case hex) so `/café` matches a request for
/// `/caf%C3%A9`.
fn encode_literal(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if is_literal(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// ASCII a literal segment may contain: what a normalised path spells one
/// way only, the unreserved characters (RFC 3986) plus `:` and `@`, which are
/// allowed raw in a segment and decoded from `%3A` / `%40` by
/// [`super::normalize`].
fn is_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@')
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

/// Whether some path matches both patterns (literals compared ignoring
/// ASCII case in a case-insensitive policy, as the trie does).
pub fn patterns_overlap(a: &[Segment], b: &[Segment], case_insensitive: bool) -> bool {
    let mut a = a.iter();
    let mut b = b.iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            // `**` matches any suffix, and every pattern matches some path.
            (Some(Segment::Rest), _) | (_, Some(Segment::Rest)) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Segment::Literal(x)), Some(Segment::Literal(y))) => {
                let same = if case_insensitive {
                    x.eq_ignore_ascii_case(y)
                } else {
                    x == y
                };
                if !same {
                    return false;
                }
            }
            // A parameter matches any one segment, a literal's too.
            (Some(_), Some(_)) => {}
        }
    }
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
        for reserved in [
            "+", "!", "$", "&", "'", "(", ")", ",", "=", "%40", " ", "\"", "|",
        ] {
            let error = parse_pattern(&format!("/a/x{reserved}y")).unwrap_err();
            assert!(error.contains("literal segments may use"), "{error}");
        }
        assert_eq!(parse_pattern("/").unwrap(), vec![]);
        // `:` and `@` have one spelling after normalisation, kept raw.
        assert_eq!(
            parse_pattern("/v1/items:batchGet").unwrap(),
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("items:batchGet".into())
            ]
        );
        assert_eq!(
            parse_pattern("/users/@me").unwrap(),
            vec![
                Segment::Literal("users".into()),
                Segment::Literal("@me".into())
            ]
        );
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
